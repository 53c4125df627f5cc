"""Commitments the app may not make: prices and sales, discounts, guarantees and refunds, legally binding promises.

Owns the default first-person offer patterns (English, with German, Spanish and French basics), the negation
check that keeps disclaimers ("this is not legally binding") quiet, and `allowed_patterns`, which suppresses
matches an app does allow (quoting list prices, its published refund policy). Meant for Stage.OUTPUT.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Self

from gengate.guard.base import Finding, ScanRequest
from gengate.guard.detectors._options import reject_unknown

# An amount of money: "$1", "€ 9.99", "1,00 €", "20 dollars", "500 EUR".
MONEY = (
    r"(?:[$€£¥]\s?\d+(?:[.,]\d+)*(?:\s?[km]\b)?"
    r"|\d+(?:[.,]\d+)*\s?(?:[$€£¥]|(?:dollars?|euros?|pounds?|usd|eur|gbp|bucks|dólares|dolares)\b))"
)
PERCENT = r"\d{1,3}(?:[.,]\d+)?\s?(?:%|percent\b|per\s?cent\b|prozent\b|por\s?ciento\b|pour\s?cent\b)"
_GAP = r"[^.!?\n]{0,60}?"  # the rest of the clause, bounded
_WE = r"\b(?:i|we)(?:'ll|'d| will| would| can| could| am able to| are able to|'m able to|'re able to)?"

_MONEY_WORDS = "$|€|£|¥|dollar|euro|pound|usd|eur|gbp|buck|dólar"

# Per kind: (trigger words, regex). A regex runs only on text containing one of its `|`-separated trigger words:
# a substring test is far cheaper than a regex pass, and most text holds none of them.
DEFAULT_PATTERNS: dict[str, tuple[tuple[str, str], ...]] = {
    "price": (
        (
            _MONEY_WORDS,
            rf"{_WE}\s+(?:sell|offer|give|let you have|do|rent|lease)\b{_GAP}\bfor\s+(?:only\s+|just\s+)?{MONEY}",
        ),
        (
            _MONEY_WORDS,
            rf"\byou\s+can\s+(?:have|get|buy|take)\s+(?:it|this|that|one|them|the\s+\w+(?:\s+\w+)?)\s+for\s+"
            rf"(?:only\s+|just\s+)?{MONEY}",
        ),
        (
            _MONEY_WORDS,
            rf"\b(?:it's|it\s+is|they're|they\s+are)\s+yours\s+for\s+(?:only\s+|just\s+)?{MONEY}",
        ),
        (
            _MONEY_WORDS,
            rf"\byour\s+(?:final\s+|special\s+|new\s+|total\s+)?price\s+(?:is|will\s+be|would\s+be)\s+(?:now\s+|only\s+|just\s+)?{MONEY}",
        ),
        (
            "match|beat",
            rf"{_WE}\s+(?:match|beat)\s+(?:any|that|their|the|your)\s+(?:\w+\s+)?(?:price|offer|quote)",
        ),
        # German, Spanish, French
        (
            _MONEY_WORDS,
            rf"\b(?:ich|wir)\s+(?:kann|können|werde|werden|verkaufe|verkaufen|gebe|geben|biete|bieten)\b{_GAP}"
            rf"\bfür\s+(?:nur\s+)?{MONEY}",
        ),
        (
            _MONEY_WORDS,
            rf"\b(?:puedo|podemos|le\s+puedo|te\s+puedo)\s+(?:venderle|venderte|vender|ofrecerle|ofrecerte|dejárselo|"
            rf"dejártelo)\b{_GAP}\bpor\s+(?:solo\s+|sólo\s+)?{MONEY}",
        ),
        (
            _MONEY_WORDS,
            rf"\b(?:je|nous)\s+(?:peux|pouvons|vais|allons)\s+vous\s+(?:le\s+|la\s+|les\s+)?(?:vendre|céder|laisser|"
            rf"proposer)\b{_GAP}\b(?:pour|à)\s+(?:seulement\s+)?{MONEY}",
        ),
    ),
    "discount": (
        (
            "off|discount",
            rf"{_WE}\s+(?:give|offer|get|apply|take|knock)\s+(?:you\s+)?(?:an?\s+)?(?:extra\s+|additional\s+|special\s+)?"
            rf"(?:{PERCENT}|{MONEY})\s+(?:off|discount)",
        ),
        (
            "discount",
            rf"{_WE}\s+(?:give|offer|apply)\s+(?:you\s+)?(?:a|an|the|my|our)\s+(?:\w+\s+){{0,2}}discount\b",
        ),
        (
            "waive",
            rf"{_WE}\s+waive\s+(?:the|your|all)\b",
        ),
        (
            "free",
            rf"{_WE}\s+(?:give|send|ship|throw\s+in)\s+(?:it|this|that|them|you)\b{_GAP}\bfor\s+free\b",
        ),
        (
            "%|prozent|rabatt|nachlass",
            rf"\b(?:ich|wir)\s+(?:gebe|geben|gewähre|gewähren|biete|bieten)\b{_GAP}\b(?:{PERCENT}|rabatt|nachlass)",
        ),
        (
            "%|por ciento|descuento",
            rf"\b(?:le|te)\s+(?:doy|damos|daré|daremos|ofrezco|ofrecemos|hago|hacemos)\b{_GAP}\b(?:{PERCENT}|descuento)",
        ),
        (
            "%|pour cent|remise|réduction|rabais",
            rf"\b(?:je|nous)\s+vous\s+(?:offre|offrons|accorde|accordons|fais|faisons)\b{_GAP}"
            rf"\b(?:{PERCENT}|remise|réduction|rabais)",
        ),
    ),
    "guarantee": (
        (
            "guarantee|warrant|promise",
            r"\b(?:i|we)\s+(?:hereby\s+|fully\s+|personally\s+|absolutely\s+|do\s+|can\s+|will\s+|'ll\s+)?"
            r"(?:guarantee|warrant|promise\s+(?:you\b|that\b|an?\b|to\s+(?:refund|replace|give|deliver|pay|match|cover|fix)))",
        ),
        (
            "refund",
            r"\b(?:i|we)(?:'ll|\s+will|\s+can)\s+(?:give|issue|process|send)\s+(?:you\s+)?(?:a\s+)?(?:full\s+|complete\s+|"
            r"100\s?%\s+)?refund",
        ),
        (
            "refund",
            r"\b(?:i|we)(?:'ll|\s+will)\s+refund\b",
        ),
        (
            "refund",
            r"\byou(?:'ll|\s+will)\s+(?:get|receive)\s+(?:a\s+)?(?:full\s+|complete\s+|100\s?%\s+)refund",
        ),
        (
            "guaranteed",
            r"\bguaranteed\s+(?:refund|returns?|approval|results?|to\s+\w+)",
        ),
        (
            "guarantee",
            r"\bmoney[\s\-]back\s+guarantee\b",
        ),
        (
            "my word",
            r"\byou\s+have\s+my\s+word\b",
        ),
        (
            "garantier|versprech",
            r"\b(?:ich|wir)\s+(?:garantiere|garantieren|verspreche|versprechen)\b",
        ),
        (
            "erstattung",
            r"\b(?:volle|vollständige)\s+(?:rückerstattung|erstattung)\b",
        ),
        (
            "garantiz|promet",
            r"\b(?:garantizo|garantizamos|prometo|prometemos|le\s+garantizo|te\s+garantizo)\b",
        ),
        (
            "reembolso",
            r"\breembolso\s+(?:completo|total|íntegro)\b",
        ),
        (
            "garantis|promet",
            r"\b(?:je|nous)\s+(?:vous\s+)?(?:garantis|garantissons|promets|promettons)\b",
        ),
        (
            "rembours",
            r"\bremboursement\s+(?:intégral|complet|total)\b",
        ),
    ),
    "legal": (
        (
            "binding",
            r"\blegally\s+binding\b",
        ),
        (
            "binding",
            r"\b(?:this|that|it)(?:'s|\s+is)\s+(?:a\s+)?binding\s+(?:offer|agreement|contract|deal|commitment)\b",
        ),
        (
            "backsies|backies",
            r"\bno\s+takes?ies[\s\-]+backs?ies\b",
        ),
        (
            "back",
            r"\bno\s+take[\s\-]?backs\b",
        ),
        (
            "deal",
            r"\b(?:it's|it\s+is|that's|that\s+is|we\s+have)\s+a\s+deal\b",
        ),
        (
            "deal",
            r"(?:\A|(?<=[.!?\n]))\s*deal\s*[!—–\-]",
        ),
        (
            "consider",
            r"\bconsider\s+it\s+a\s+(?:done\s+)?(?:deal|contract)\b",
        ),
        (
            "terms",
            r"\b(?:i|we)\s+(?:hereby\s+)?(?:agree|accept|consent)\s+to\s+(?:your|these|the|those)\s+(?:\w+\s+)?terms\b",
        ),
        (
            "verbindlich",
            r"\brechtsverbindlich\w*",
        ),
        (
            "verbindlich",
            r"\bverbindliches\s+angebot\b",
        ),
        (
            "vinculante",
            r"\b(?:legalmente|jurídicamente|juridicamente)\s+vinculante\b",
        ),
        (
            "vinculante",
            r"\boferta\s+vinculante\b",
        ),
        (
            "contraignant",
            r"\b(?:juridiquement|légalement|legalement)\s+contraignante?\b",
        ),
        (
            "ferme",
            r"\boffre\s+ferme\b",
        ),
    ),
}
# A negation just before the match, in the same clause, turns it into a disclaimer.
_NEGATION = re.compile(
    r"\b(?:not|no|never|cannot|can't|won't|don't|doesn't|isn't|aren't|nothing|nicht|kein\w*|nie|nunca|"
    r"pas|jamais|ne|n')\s*$"
)
_CLAUSE_START = re.compile(r"[,.;:!?\n—–]")
_ASCII_LOWER = {c: chr(c + 32) for c in range(ord("A"), ord("Z") + 1)}
_LABEL = re.compile(r"[a-z][a-z0-9_]*")


class CommitmentDetector:
    """Finds offers, prices, discounts, guarantees, refunds and binding promises (labels `commitment.<kind>`).

    `patterns` adds regexes per kind (case-insensitive) and `phrases` adds literal phrases per kind (matched as
    whole words, any spacing); `use_defaults=False` drops the built-in patterns. A match overlapping a match of
    any `allowed_patterns` regex is not reported.
    """

    name = "commitments"
    version = "1"
    KINDS: tuple[str, ...] = ("price", "discount", "guarantee", "legal")
    _OPTIONS = frozenset({"patterns", "phrases", "allowed_patterns", "use_defaults", "max_findings"})

    def __init__(
        self,
        *,
        patterns: Mapping[str, Sequence[str]] | None = None,
        phrases: Mapping[str, Sequence[str]] | None = None,
        allowed_patterns: Sequence[str] = (),
        use_defaults: bool = True,
        max_findings: int = 50,
    ) -> None:
        if max_findings < 1:
            raise ValueError(f"max_findings must be at least 1, got {max_findings}")
        self.max_findings = max_findings
        # The built-in patterns are lowercase and run on the lowercased text: case-insensitive `re` is several
        # times slower. Configured patterns and phrases run case-insensitively on the text as it is.
        builtin = DEFAULT_PATTERNS if use_defaults else {}
        configured: dict[str, list[str]] = {}
        for kind, extra in (patterns or {}).items():
            configured.setdefault(_kind(kind, "patterns"), []).extend(extra)
        for kind, literal in (phrases or {}).items():
            configured.setdefault(_kind(kind, "phrases"), []).extend(
                r"(?<!\w)" + r"\s+".join(map(re.escape, p.split())) + r"(?!\w)" for p in literal if p.strip()
            )
        # One regex per kind and case mode: a single pass finds every match of a kind.
        self._builtin = [
            (kind, tuple(triggers.split("|")), re.compile(regex))
            for kind, rules in builtin.items()
            for triggers, regex in rules
        ]
        self._configured = [
            (kind, _compile(f"{kind} pattern", _union(regexes))) for kind, regexes in configured.items() if regexes
        ]
        self._allowed = [_compile("allowed_patterns", p) for p in allowed_patterns]

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> Self:
        """Build from the `commitments` options of a guard profile, rejecting unknown or mistyped options."""
        reject_unknown("commitments", options, cls._OPTIONS)
        per_kind = {}
        for key in ("patterns", "phrases"):
            value = options.get(key) or {}
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, list | tuple) and all(isinstance(s, str) for s in v)
                for k, v in value.items()
            ):
                raise ValueError(f"commitments: option '{key}' must map each kind to a list of strings")
            per_kind[key] = value
        allowed = options.get("allowed_patterns", ())
        if not isinstance(allowed, list | tuple) or not all(isinstance(p, str) for p in allowed):
            raise ValueError("commitments: option 'allowed_patterns' must be a list of strings")
        use_defaults = options.get("use_defaults", True)
        if not isinstance(use_defaults, bool):
            raise ValueError("commitments: option 'use_defaults' must be true or false")
        max_findings = options.get("max_findings", 50)
        if isinstance(max_findings, bool) or not isinstance(max_findings, int):
            raise ValueError("commitments: option 'max_findings' must be an integer")
        try:
            return cls(
                patterns=per_kind["patterns"],
                phrases=per_kind["phrases"],
                allowed_patterns=allowed,
                use_defaults=use_defaults,
                max_findings=max_findings,
            )
        except ValueError as exc:
            raise ValueError(f"commitments: option {exc}") from None

    def scan(self, request: ScanRequest) -> list[Finding]:
        """Commitments in the request's text, minus disclaimers and allowed statements."""
        text = request.text
        if not text:
            return []
        allowed = [m.span() for regex in self._allowed for m in regex.finditer(text)]
        lowered = _lower(text)
        findings: list[Finding] = []
        builtin = [(k, r) for k, triggers, r in self._builtin if any(t in lowered for t in triggers)]
        for haystack, kinds in ((lowered, builtin), (text, self._configured)):
            for kind, regex in kinds:
                for m in regex.finditer(haystack):
                    start, end = m.span()
                    while start < end and text[start] in ".!? \t\n":  # sentence-start anchors match the gap
                        start += 1
                    if start == end or self._negated(lowered, start):
                        continue
                    if any(s < end and start < e for s, e in allowed):
                        continue
                    explanation = f"output seems to commit to a {kind}"
                    findings.append(Finding(f"commitment.{kind}", start, end, 0.8, self.name, explanation))
        findings.sort(key=lambda f: f.start)
        return findings[: self.max_findings]

    def _negated(self, text: str, start: int) -> bool:
        window = text[max(0, start - 40) : start]
        clause = _CLAUSE_START.split(window)[-1]
        return _NEGATION.search(clause) is not None


def _union(regexes: Sequence[str]) -> str:
    return "|".join(f"(?:{r})" for r in regexes)


def _lower(text: str) -> str:
    """`text` lowercased without moving any character (so offsets stay valid)."""
    lowered = text.lower()
    # str.lower() never shortens, and lengthens only for a few characters such as 'İ'.
    return lowered if len(lowered) == len(text) else text.translate(_ASCII_LOWER)


def _kind(kind: str, option: str) -> str:
    if not isinstance(kind, str) or not _LABEL.fullmatch(kind):
        raise ValueError(f"{option}: kind {kind!r} must be lowercase letters, digits and underscores")
    return kind


def _compile(what: str, regex: str) -> re.Pattern[str]:
    try:
        return re.compile(regex, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"{what}: invalid regex ({exc})") from None
