"""Configuration of app tools: JSON-schema parameters, caller-bound parameters and fixed HTTP backends.

Owns: the schema of an app's `tools:` list and `tool_limits`, and its load-time checks (bind sources, the
JSON-schema keywords the runtime enforces, URL shape and placeholders, token exchange, tool names), plus small
read-only helpers the runtime uses to read a spec. Must not: import `gengate.settings` (which embeds these
models), touch the network, or show secret values in `repr` or error messages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from gengate.config_types import Secret, StrictModel

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
PRINCIPAL_FIELDS = ("subject", "team", "groups", "roles")
_CLAIM_PATH = re.compile(r"^claims\.[^.\s]+(\.[^.\s]+)*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers the HTTP client or the transport owns; configuring them would be ignored or would corrupt the request.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "cookie"})

JSON_TYPES = frozenset({"string", "integer", "number", "boolean", "array", "object", "null"})
# Every validation keyword here is enforced at run time; anything else would be silently unenforced, so it is
# refused at load instead.
_VALIDATION_KEYWORDS = frozenset(
    {
        "type",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "required",
        "additionalProperties",
    }
)
_ANNOTATION_KEYWORDS = frozenset({"title", "description", "default", "examples"})
_SUPPORTED = ", ".join(sorted(_VALIDATION_KEYWORDS | _ANNOTATION_KEYWORDS))


class _Model(StrictModel):
    """A configuration section of this module."""


def _check_url(url: str, *, placeholders: bool) -> str:
    """A fixed http(s) URL with a host; `{name}` placeholders are allowed only in the path."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r} must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials (user:password@); use `headers` or `identity`")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    if parts.fragment or url.endswith("#"):
        raise ValueError(f"{url!r} must not have a #fragment")
    if any(c in parts.netloc + parts.query for c in "{}"):
        raise ValueError(f"{url!r}: {{placeholders}} are allowed only in the path, never in host, port or query")
    rest = PLACEHOLDER.sub("", parts.path) if placeholders else parts.path
    if any(c in rest for c in "{}"):
        hint = "placeholders look like {name} (letters, digits, '_')" if placeholders else "no placeholders here"
        raise ValueError(f"{url!r} has a stray brace in its path ({hint})")
    return url


def bind_source_error(source: object) -> str | None:
    """Why `source` is not a valid bind source, or None when it is."""
    if not isinstance(source, str):
        return "must be a string such as claims.sub or principal.team"
    root, _, rest = source.partition(".")
    if root == "principal" and rest in PRINCIPAL_FIELDS:
        return None
    if root == "claims" and _CLAIM_PATH.match(source):
        return None
    fields = ", ".join(f"principal.{f}" for f in PRINCIPAL_FIELDS)
    return f"unknown bind source {source!r} (use {fields} or claims.<dotted.path>)"


def _types_of(schema: Mapping[str, Any]) -> set[str] | None:
    declared = schema.get("type")
    if declared is None:
        return None
    return {declared} if isinstance(declared, str) else set(declared)


def _check_schema(schema: object, where: str, *, property_of_root: bool = False, root: bool = False) -> None:
    """Refuse schema keywords the runtime would not enforce, malformed values, and nested `bind`."""
    if not isinstance(schema, Mapping):
        raise ValueError(f"{where}: a schema must be a mapping")
    for key in schema:
        if key == "bind":
            if not property_of_root:
                raise ValueError(f"{where}.bind: bind is allowed only on top-level properties")
            problem = bind_source_error(schema[key])
            if problem:
                raise ValueError(f"{where}.bind: {problem}")
        elif key not in _VALIDATION_KEYWORDS and key not in _ANNOTATION_KEYWORDS:
            raise ValueError(f"{where}: keyword {key!r} is not supported (supported: {_SUPPORTED})")
    declared = schema.get("type")
    if declared is not None:
        names = [declared] if isinstance(declared, str) else declared
        if not isinstance(names, list) or not names or any(n not in JSON_TYPES for n in names):
            raise ValueError(f"{where}.type: must be one of {', '.join(sorted(JSON_TYPES))} (or a list of them)")
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise ValueError(f"{where}.enum: must be a non-empty list")
    for key in ("minimum", "maximum"):
        value = schema.get(key)
        if key in schema and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{where}.{key}: must be a number")
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        value = schema.get(key)
        if key in schema and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{where}.{key}: must be a non-negative integer")
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except (re.error, TypeError) as exc:
            raise ValueError(f"{where}.pattern: not a valid regular expression ({exc})") from None
    if "additionalProperties" in schema and not isinstance(schema["additionalProperties"], bool):
        raise ValueError(f"{where}.additionalProperties: only true or false is supported")
    if "items" in schema:
        _check_schema(schema["items"], f"{where}.items")
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping):
        raise ValueError(f"{where}.properties: must be a mapping of property name to schema")
    for name, sub in properties.items():
        _check_schema(sub, f"{where}.properties.{name}", property_of_root=root)
    required = schema.get("required", [])
    if not isinstance(required, list) or any(not isinstance(r, str) for r in required):
        raise ValueError(f"{where}.required: must be a list of property names")
    missing = [r for r in required if r not in properties]
    if missing:
        raise ValueError(f"{where}.required: {', '.join(missing)} not declared in properties")


def _check_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The top-level schema: an object whose properties may be bound to the caller."""
    if parameters.get("type") != "object":
        raise ValueError("parameters.type: must be `object`")
    _check_schema(parameters, "parameters", root=True)
    for name, schema in parameters.get("properties", {}).items():
        where = f"parameters.properties.{name}"
        source = schema.get("bind")
        types = _types_of(schema)
        if source is None or types is None:
            continue
        # principal.* values have a known shape; a schema that cannot hold them is a configuration mistake.
        field = source.removeprefix("principal.")
        if field in ("subject", "team") and "string" not in types:
            raise ValueError(f"{where}.type: {source} is a string, so the property must allow type string")
        if field in ("groups", "roles") and "array" not in types:
            raise ValueError(f"{where}.type: {source} is a list, so the property must allow type array")
    return parameters


class TokenExchange(_Model):
    """An RFC 8693 token exchange: the caller's token is swapped for one meant for the tool's backend."""

    url: str
    client_id: str
    client_secret: Secret
    audience: str | None = None
    scope: str | None = None
    subject_token_type: str = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
    # basic: HTTP Basic with the form-encoded id and secret (RFC 6749 §2.3.1); post: both in the form body.
    client_auth: Literal["basic", "post"] = "basic"

    @field_validator("url")
    @classmethod
    def _fixed_url(cls, v: str) -> str:
        return _check_url(v, placeholders=False)


class ToolHttp(_Model):
    """The backend a tool calls: a URL fixed in configuration, with `{param}` placeholders only in its path."""

    method: Annotated[Literal["GET", "POST"], BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v)] = "GET"
    url: str
    # Parameters sent in the query string. For GET, None means every parameter not in the path;
    # for POST, parameters neither in the path nor here form the JSON body.
    query: list[str] | None = None
    # bearer: forward the caller's own token; exchange: forward a token from `exchange`; none: no identity.
    identity: Literal["bearer", "exchange", "none"] = "bearer"
    exchange: TokenExchange | None = None
    headers: dict[str, Secret] = {}
    timeout: float | None = Field(None, gt=0, le=300)  # seconds; capped by the app's tool_limits.timeout
    max_response_bytes: int = Field(64 * 1024, ge=1024, le=4 * 1024 * 1024)

    @field_validator("url")
    @classmethod
    def _fixed_url(cls, v: str) -> str:
        return _check_url(v, placeholders=True)

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, value in v.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"{name!r} is set by the HTTP client and cannot be configured")
            if any(c in value.get_secret_value() for c in "\r\n\0"):
                raise ValueError(f"{name}: header values must not contain line breaks")
        return v

    @model_validator(mode="after")
    def _identity_matches(self) -> ToolHttp:
        if self.identity == "exchange" and self.exchange is None:
            raise ValueError("identity: exchange needs an `exchange` block (url, client_id, client_secret)")
        if self.identity != "exchange" and self.exchange is not None:
            raise ValueError(f"`exchange` is only used with identity: exchange (identity is {self.identity})")
        if self.identity != "none" and any(h.lower() == "authorization" for h in self.headers):
            raise ValueError(f"headers.Authorization conflicts with identity: {self.identity}")
        return self

    @property
    def path_params(self) -> list[str]:
        """Parameter names used as `{placeholders}` in the URL path, in order, without repeats."""
        return list(dict.fromkeys(PLACEHOLDER.findall(urlsplit(self.url).path)))


class ToolSpec(_Model):
    """One tool an app's model may call: its name, its JSON-schema parameters and the backend it calls."""

    name: str
    description: str = ""
    parameters: Annotated[dict[str, Any], AfterValidator(_check_parameters)] = {"type": "object", "properties": {}}
    http: ToolHttp

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not TOOL_NAME.match(v):
            raise ValueError(f"tool name {v!r} must be 1-64 letters, digits, '_' or '-'")
        return v

    @model_validator(mode="after")
    def _references_declared(self) -> ToolSpec:
        properties = self.properties
        undeclared = [p for p in self.http.path_params if p not in properties]
        if undeclared:
            raise ValueError(f"http.url: placeholder {{{undeclared[0]}}} is not a declared parameter")
        query = self.http.query
        if query is not None:
            unknown = [q for q in query if q not in properties]
            if unknown:
                raise ValueError(f"http.query: {', '.join(unknown)} not declared in parameters.properties")
            both = [q for q in query if q in self.http.path_params]
            if both:
                raise ValueError(f"http.query: {', '.join(both)} is already a placeholder in http.url")
            if self.http.method == "GET":
                placed = set(query) | set(self.http.path_params)
                unplaced = [p for p in properties if p not in placed]
                if unplaced:
                    raise ValueError(
                        f"http.query: GET sends no body, so {', '.join(unplaced)} must be in the url path or in query"
                    )
        return self

    @property
    def properties(self) -> dict[str, dict[str, Any]]:
        """The top-level parameter schemas by name."""
        props: dict[str, dict[str, Any]] = self.parameters.get("properties", {})
        return props

    @property
    def bound(self) -> dict[str, str]:
        """Bound parameters: name → bind source (`principal.team`, `claims.sub`, …)."""
        return {name: schema["bind"] for name, schema in self.properties.items() if "bind" in schema}


class ToolLimits(_Model):
    """Per-app limits on tool use: model ↔ tool rounds per request and seconds per tool call."""

    max_rounds: int = Field(3, ge=1, le=20)
    timeout: float = Field(10.0, gt=0, le=300)


def _unique_names(tools: list[ToolSpec]) -> list[ToolSpec]:
    names = [t.name for t in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate tool names: {', '.join(duplicates)}")
    return tools


# An app's `tools:` list, with names checked for uniqueness.
ToolSpecs = Annotated[list[ToolSpec], AfterValidator(_unique_names)]
