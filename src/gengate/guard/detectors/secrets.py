"""Credentials in text: cloud and SaaS API keys, tokens, private keys, passwords in connection strings, and
high-entropy values assigned to key-like names.

Owns the secret patterns and the heuristics that keep ordinary identifiers (UUIDs, git SHAs, hashes in prose,
base64 images, code references, placeholders) from being reported. Spans cover the secret value only, so a
redacting action leaves `postgres://app:[REDACTED]@db` readable. Must not log, store or echo the values.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from gengate.guard.base import Finding, ScanRequest
from gengate.guard.detectors._options import reject_unknown


@dataclass(frozen=True, slots=True)
class _Pattern:
    """A specific secret format: the value is regex group 1; `check` rejects look-alikes."""

    kind: str
    regex: str  # starts with a literal, so `re` can skip ahead fast; the left boundary is checked in Python
    score: float
    explanation: str
    boundary: str = "A-Za-z0-9"  # characters that may not precede the value (a regex character-class body)
    check: str = ""  # name of a SecretsDetector method taking the value, "" for none


def _entropy(value: str) -> float:
    """Shannon entropy of `value` in bits per character."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values()) if n else 0.0


def _letters_and_digits(value: str) -> bool:
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def _jwt_header_has_alg(value: str) -> bool:
    header = value.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):  # ValueError covers JSON and UTF-8 errors
        return False
    return isinstance(decoded, dict) and "alg" in decoded


_PLACEHOLDER_PASSWORDS = frozenset({"password", "pass", "passwd", "pwd", "secret", "changeme", "user", "username"})
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Values that name a secret instead of being one: `settings.SECRET_KEY`, `DEFAULT_ADMIN_TOKEN`, paths, URLs.
_CODE_REFERENCE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[./~].*|.*://.*")
_PLACEHOLDER_WORDS = ("example", "xxxx", "your", "changeme", "placeholder", "redacted", "dummy", "sample", "****")
# Key names whose value is not a secret (`token_count`, `password_hash`, `secret_id`, `api_key_name`).
_HARMLESS_NAME_WORDS = frozenset(
    {
        "id",
        "ids",
        "uuid",
        "arn",
        "name",
        "names",
        "url",
        "uri",
        "path",
        "file",
        "type",
        "length",
        "len",
        "count",
        "ttl",
        "expiry",
        "expires",
        "hash",
        "sha",
        "sha1",
        "sha256",
        "digest",
        "checksum",
        "fingerprint",
        "version",
        "field",
        "format",
        "policy",
        "limit",
        "size",
        "tokens",
        "header",
        "prefix",
        "env",
        "var",
    }
)
_KEY_WORDS = ("key", "secret", "token", "passw", "pwd", "passphrase", "credential", "bearer", "basic")
_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
_IDENTIFIER_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


class SecretsDetector:
    """Finds credentials: specific formats first, then high-entropy values next to key-like names.

    Labels are `secret.<kind>`; `kinds` restricts which are reported (default: all of `KINDS`). Where two
    matches overlap, the more specific pattern wins (a JWT after `Bearer` is a `secret.jwt`).
    """

    name = "secrets"
    version = "1"

    # Ordered from most to least specific; the order settles overlaps.
    PATTERNS: tuple[_Pattern, ...] = (
        _Pattern(
            "aws_access_key",
            r"(A(?:KIA|SIA)[A-Z0-9]{16})(?![A-Za-z0-9])",
            0.95,
            "AWS access key id",
        ),
        _Pattern(
            "github_token",
            r"(gh[pousr]_[A-Za-z0-9]{36,251}+|github_pat_[A-Za-z0-9_]{50,255}+)(?![A-Za-z0-9_])",
            0.99,
            "GitHub token",
            "A-Za-z0-9_",
        ),
        _Pattern(
            "slack_webhook",
            r"(https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]{20,300})",
            0.95,
            "Slack incoming webhook URL",
        ),
        _Pattern(
            "slack_token",
            r"(xox[abprs]-[A-Za-z0-9\-]{10,250}+)(?![A-Za-z0-9\-])",
            0.95,
            "Slack token",
            r"A-Za-z0-9\-",
            "_has_digit",
        ),
        _Pattern(
            "stripe_key",
            r"([sr]k_live_[A-Za-z0-9]{20,247}+)(?![A-Za-z0-9_])",
            0.99,
            "Stripe live secret key",
            "A-Za-z0-9_",
        ),
        _Pattern(
            "google_api_key",
            r"(AIza[0-9A-Za-z_\-]{35})(?![A-Za-z0-9_\-])",
            0.95,
            "Google API key",
            r"A-Za-z0-9_\-",
        ),
        _Pattern(
            "anthropic_key",
            r"(sk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_\-]{32,250}+)(?![A-Za-z0-9_\-])",
            0.99,
            "Anthropic API key",
            r"A-Za-z0-9_\-",
        ),
        _Pattern(
            "openai_key",
            r"(sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,250}+)(?![A-Za-z0-9_\-])",
            0.9,
            "OpenAI-style API key",
            r"A-Za-z0-9_\-",
            "_random_enough",
        ),
        _Pattern(
            "jwt",
            r"(e[wy][A-Za-z0-9_\-]{8,4096}+\.[A-Za-z0-9_\-]{8,8192}+\.[A-Za-z0-9_\-]{0,4096}+)(?![A-Za-z0-9_\-])",
            0.9,
            "JSON Web Token",
            r"A-Za-z0-9_\-.",
            "_is_jwt",
        ),
        _Pattern(
            "connection_string",
            r"://[^\s:/?#@\"'<>]{0,256}:([^\s/?#@\"'<>]{1,256})@(?=[A-Za-z0-9\[])",
            0.9,
            "password in a connection string",
            "",  # the value follows the scheme and user name, so there is no left boundary to check
            "_real_password",
        ),
    )
    KINDS: tuple[str, ...] = (
        *(p.kind for p in PATTERNS),
        "private_key",
        "aws_secret_key",
        "generic",
    )
    KEY_NAMES: tuple[str, ...] = (
        r"api[_\-]?key",
        r"access[_\-]?key",
        r"secret",
        r"token",
        r"passw(?:or)?d",
        r"passphrase",
        r"pwd",
        r"credentials?",
    )
    _OPTIONS = frozenset({"kinds", "entropy_threshold", "min_length", "extra_key_names", "max_findings"})

    def __init__(
        self,
        *,
        kinds: Sequence[str] | None = None,
        entropy_threshold: float = 3.0,
        min_length: int = 20,
        extra_key_names: Sequence[str] = (),
        max_findings: int = 100,
    ) -> None:
        if kinds is not None:
            unknown = sorted(set(kinds) - set(self.KINDS))
            if unknown:
                raise ValueError(f"kinds: unknown secret kind(s) {unknown}; known: {list(self.KINDS)}")
        if not 0 < entropy_threshold <= 8:
            raise ValueError(f"entropy_threshold must be in (0, 8] bits per character, got {entropy_threshold}")
        if not 8 <= min_length <= 512:
            raise ValueError(f"min_length must be between 8 and 512, got {min_length}")
        if max_findings < 1:
            raise ValueError(f"max_findings must be at least 1, got {max_findings}")
        if any(not isinstance(n, str) or not n.strip() for n in extra_key_names):
            raise ValueError("extra_key_names must be non-empty strings")
        self.kinds = frozenset(self.KINDS if kinds is None else kinds)
        self.entropy_threshold = entropy_threshold
        self.min_length = min_length
        self.max_findings = max_findings

        self._specific = [
            (
                i,
                p,
                re.compile(p.regex),
                re.compile(f"[{p.boundary}]") if p.boundary else None,
                getattr(self, p.check) if p.check else None,
            )
            for i, p in enumerate(self.PATTERNS)
            if p.kind in self.kinds
        ]
        self._pem_begin = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ ){0,4})PRIVATE KEY(?: BLOCK)?-----")
        self._pem_end = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
        # Without a footer, the key runs over base64 lines and `Proc-Type: …` headers, and stops at prose.
        self._pem_body = re.compile(r"(?:[ \t]*\r?\n(?:[A-Za-z0-9+/=]+|[A-Za-z][A-Za-z\-]*:[^\n]*))*")
        self._aws_secret = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
        self._aws_context = re.compile(r"aws|secret")
        # Key names are matched on the ASCII-lowercased text (case-insensitive `re` is several times slower).
        self._extra_key_names = tuple(n.strip().lower() for n in extra_key_names)
        names = "|".join([*self.KEY_NAMES, *(re.escape(n) for n in self._extra_key_names)])
        # A value runs to whitespace, a quote or a bracket; `&` only ends it before `name=` (a URL query).
        char = r"(?:[^\s\"'`<>(){}\[\],;&]|&(?![\w.\-]+=))"
        value = rf"[\"'`]?({char}{{8,512}}+)(?!{char})"
        self._assignment = re.compile(
            rf"(?:{names})[a-z0-9_.\-]{{0,30}}[\"'\]]?(?:\s*(?:=>|:=|[:=])\s*|\s+is\s+|\s+){value}"
        )
        self._bearer = re.compile(rf"(?:bearer|basic)\s+{value}")
        self._identifier_char = re.compile(r"[A-Za-z0-9_.\-]")
        self._data_uri = re.compile(r"data:[\w.+\-]+/[\w.+\-]+(?:;[\w.+\-]+=[\w.+\-]+)*;base64,[A-Za-z0-9+/=]*")

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> Self:
        """Build from the `secrets` options of a guard profile, rejecting unknown or mistyped options."""
        reject_unknown("secrets", options, cls._OPTIONS)
        kinds = options.get("kinds")
        if kinds is not None and not _is_str_list(kinds):
            raise ValueError("secrets: option 'kinds' must be a list of strings")
        extra = options.get("extra_key_names", ())
        if not _is_str_list(extra):
            raise ValueError("secrets: option 'extra_key_names' must be a list of strings")
        threshold = options.get("entropy_threshold", 3.0)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ValueError("secrets: option 'entropy_threshold' must be a number")
        ints = {key: options.get(key, default) for key, default in (("min_length", 20), ("max_findings", 100))}
        for key, val in ints.items():
            if isinstance(val, bool) or not isinstance(val, int):
                raise ValueError(f"secrets: option '{key}' must be an integer")
        try:
            return cls(
                kinds=kinds,
                entropy_threshold=float(threshold),
                min_length=ints["min_length"],
                extra_key_names=extra,
                max_findings=ints["max_findings"],
            )
        except ValueError as exc:
            raise ValueError(f"secrets: option {exc}") from None

    def scan(self, request: ScanRequest) -> list[Finding]:
        """Secrets in the request's text, most specific kind first where matches overlap."""
        text = request.text
        candidates: list[tuple[int, Finding]] = []  # (priority, finding)
        for priority, pattern, regex, boundary, check in self._specific:
            for m in regex.finditer(text):
                start = m.start(1)
                if boundary is not None and start > 0 and boundary.match(text, start - 1):
                    continue  # inside a longer token, e.g. a base64 blob
                if check is None or check(m.group(1)):
                    finding = self._finding(pattern.kind, m.span(1), pattern.score, pattern.explanation)
                    candidates.append((priority, finding))
        last = len(self.PATTERNS)
        if "private_key" in self.kinds:
            candidates += [(-1, f) for f in self._private_keys(text)]
        lowered = _ascii_lower(text)
        if "aws_secret_key" in self.kinds and ("aws" in lowered or "secret" in lowered):
            candidates += [(last, f) for f in self._aws_secret_keys(text, lowered)]
        if "generic" in self.kinds and self._mentions_key_name(lowered):
            candidates += [(last + 1, f) for f in self._generic(text, lowered)]
        return self._resolve(candidates, text)

    # -- helpers -----------------------------------------------------------------------------------------------

    def _finding(self, kind: str, span: tuple[int, int], score: float, explanation: str) -> Finding:
        return Finding(f"secret.{kind}", span[0], span[1], score, self.name, f"looks like a {explanation}")

    def _resolve(self, candidates: list[tuple[int, Finding]], text: str) -> list[Finding]:
        """Drop matches inside base64 data URIs and matches overlapped by a more specific one."""
        if not candidates:
            return []
        excluded = [m.span() for m in self._data_uri.finditer(text)] if "base64," in text else []
        kept: list[Finding] = []
        for _, f in sorted(candidates, key=lambda pf: (pf[0], pf[1].start)):
            if any(s <= f.start and f.end <= e for s, e in excluded):
                continue
            if any(f.start < k.end and k.start < f.end for k in kept):
                continue
            kept.append(f)
            if len(kept) >= self.max_findings:
                break
        return sorted(kept, key=lambda f: f.start)

    def _private_keys(self, text: str) -> Iterator[Finding]:
        if "PRIVATE KEY" not in text:
            return
        # Footers are found in one pass, so a text of many headers and no footers stays linear.
        footers = [m.span() for m in self._pem_end.finditer(text)]
        pos = 0
        while (begin := self._pem_begin.search(text, pos)) is not None:
            k = bisect_left(footers, (begin.end(), 0))
            if k < len(footers) and footers[k][0] - begin.end() <= 65536:
                stop = footers[k][1]
            else:
                body = self._pem_body.match(text, begin.end())
                stop = body.end() if body is not None else begin.end()
            yield self._finding("private_key", (begin.start(), stop), 0.99, "PEM private key")
            pos = stop

    def _mentions_key_name(self, lowered: str) -> bool:
        return any(word in lowered for word in _KEY_WORDS) or any(n in lowered for n in self._extra_key_names)

    def _aws_secret_keys(self, text: str, lowered: str) -> Iterator[Finding]:
        for m in self._aws_secret.finditer(text):
            line_start = text.rfind("\n", 0, m.start()) + 1
            context = lowered[max(line_start, m.start() - 60) : m.start()]
            value = m.group()
            mixed = any(c.isupper() for c in value) and any(c.islower() for c in value)
            if mixed and self._aws_context.search(context) and _entropy(value) >= self.entropy_threshold:
                yield self._finding("aws_secret_key", m.span(), 0.9, "AWS secret access key")

    def _generic(self, text: str, lowered: str) -> Iterator[Finding]:
        for m in self._assignment.finditer(lowered):
            if not self._harmless_name(text, m.start(), m.start(1)):
                yield from self._generic_value(text, m.start(1), m.end(1))
        for m in self._bearer.finditer(lowered):
            if m.start() == 0 or not lowered[m.start() - 1].isalnum():
                yield from self._generic_value(text, m.start(1), m.end(1))

    def _generic_value(self, text: str, start: int, end: int) -> Iterator[Finding]:
        value = text[start:end].rstrip(".,!?:")
        if self._high_entropy_value(value):
            yield self._finding("generic", (start, start + len(value)), 0.7, "high-entropy credential")

    def _harmless_name(self, text: str, name_start: int, value_start: int) -> bool:
        start = name_start
        while start > 0 and name_start - start < 60 and self._identifier_char.match(text, start - 1):
            start -= 1
        identifier = text[start:value_start].strip(" \t\r\n\"'`]:=>")
        words = [w.lower() for w in _IDENTIFIER_WORDS.findall(identifier)]
        return bool(words) and (words[-1] in _HARMLESS_NAME_WORDS or "hash" in words or "sha256" in words)

    def _high_entropy_value(self, value: str) -> bool:
        lowered = value.lower()
        return (
            len(value) >= self.min_length
            and _letters_and_digits(value)
            and value[0] not in "$%"  # $ENV_VAR, %(name)s
            and _UUID.fullmatch(value) is None
            and _CODE_REFERENCE.fullmatch(value) is None
            and not any(word in lowered for word in _PLACEHOLDER_WORDS)
            and _entropy(value) >= self.entropy_threshold
        )

    # -- checks named by PATTERNS ------------------------------------------------------------------------------

    def _has_digit(self, value: str) -> bool:
        return any(c.isdigit() for c in value)

    def _random_enough(self, value: str) -> bool:
        body = value.split("-", 1)[1]
        return _letters_and_digits(body) and _entropy(body) >= self.entropy_threshold

    def _is_jwt(self, value: str) -> bool:
        return _jwt_header_has_alg(value)

    def _real_password(self, value: str) -> bool:
        lowered = value.lower()
        return not (
            lowered in _PLACEHOLDER_PASSWORDS
            or value[0] in "${<[*"
            or set(value) <= set("*x•.")
            or any(word in lowered for word in ("your", "placeholder", "changeme", "<", "xxx"))
        )


def _ascii_lower(text: str) -> str:
    """`text` lowercased without moving any character (so offsets stay valid)."""
    lowered = text.lower()
    # str.lower() never shortens, and lengthens only for a few characters such as 'İ'.
    return lowered if len(lowered) == len(text) else text.translate(_ASCII_LOWER)


def _is_str_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
