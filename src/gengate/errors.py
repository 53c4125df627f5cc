"""The one exception tree of gengate, and its mapping to HTTP status and OpenAI's error shape.

    GengateError                      base; never raised directly
    ├── ConfigError                   invalid gengate.yaml / environment (names the key and line)
    ├── RequestError (400)            malformed JSON, wrong types, too many messages …
    │   ├── PayloadTooLarge (413)
    │   ├── NotFound (404)            no such route, key or request record
    │   ├── Conflict (409)            creating something that already exists (a knowledge base)
    │   └── UnknownModel (404)        model alias that does not exist or that the caller may not see
    ├── AuthenticationError (401)     missing, invalid, expired or revoked credentials
    ├── PermissionDenied (403)        authenticated, but not allowed (model, admin plane)
    ├── RateLimited (429)             RPM / TPM limit reached
    ├── BudgetExceeded (429)          budget exhausted for the period (`insufficient_quota`)
    ├── PricingMissing (400)          a budget applies but the model has no price
    └── UpstreamError (502)           upstream fault: garbage, 5xx after retries, connection refused
        ├── UpstreamTimeout (504)
        └── UpstreamRejected          upstream 4xx passed back with its own status (never retried)

Only `app/errors.py` turns these into HTTP responses; everything else raises them.
"""

from __future__ import annotations

from typing import Any


class GengateError(Exception):
    """Base class: a message for humans, an HTTP status and an OpenAI error `type`/`code`."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error JSON object (`{"error": {...}}`)."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ConfigError(GengateError):
    """Configuration is invalid; the message names the key (and the line when known)."""

    status = 500
    type = "config_error"


class RequestError(GengateError):
    """The request is malformed or has invalid values."""

    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(RequestError):
    """The request body exceeds the configured limit."""

    status = 413
    code = "payload_too_large"


class NotFound(RequestError):
    """No such route or resource."""

    status = 404
    code = "not_found"


class Conflict(RequestError):
    """The resource already exists."""

    status = 409
    code = "conflict"


class UnknownModel(RequestError):
    """The model does not exist, or the caller may not know that it does."""

    status = 404
    code = "model_not_found"


class AuthenticationError(GengateError):
    """Missing, malformed, invalid, expired or revoked credentials."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GengateError):
    """The caller is authenticated but not allowed to do this."""

    status = 403
    type = "permission_error"
    code = "forbidden"


class RateLimited(GengateError):
    """A requests-per-minute or tokens-per-minute limit was reached."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float = 1.0, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class BudgetExceeded(GengateError):
    """The budget for the current period would be exceeded."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class PricingMissing(RequestError):
    """A budget applies to the caller but the model has no price: refusing beats counting it as $0."""

    code = "model_not_priced"


class UpstreamError(GengateError):
    """The upstream provider failed (after retries and fallbacks)."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"

    def __init__(
        self, message: str, *, retryable: bool = True, code: str | None = None, upstream_status: int | None = None,
        summary: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message, code=code)
        self.retryable = retryable
        self.upstream_status = upstream_status  # the HTTP status the upstream answered, when it answered
        # The message without anything the upstream wrote (which may quote the request): what traces keep.
        self.summary = summary if summary is not None else message


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""

    status = 504
    code = "upstream_timeout"


class UpstreamRejected(UpstreamError):
    """The upstream refused the request with a 4xx; its status and message are passed back."""

    def __init__(
        self, message: str, *, status: int, body: dict[str, Any] | None = None, summary: str | None = None
    ) -> None:
        super().__init__(message, retryable=status == 429, upstream_status=status, summary=summary)
        self.status = status
        self.type = "invalid_request_error" if status != 429 else "rate_limit_error"
        self.code = "upstream_rejected"
        self.body = body


class ProviderUnavailable(UpstreamError):
    """A provider cannot serve at all (not installed, not started, circuit open everywhere)."""

    status = 503
    code = "provider_unavailable"
