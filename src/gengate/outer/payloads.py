"""What is kept of a question and its answer, per the app's payload setting.

`full` keeps the text, `redacted` masks personal data and secrets with the guard's own detectors (labels such as
`[PII_EMAIL]`, the same masks the guard's redact action writes), `none` keeps nothing. Owns: the redactor and the
response record an answer leaves for the outer loop. Must not: write to the store (the trace writer does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from gengate.guard.base import Detector, Finding, ScanRequest
from gengate.guard.detectors.pii import PiiDetector
from gengate.guard.detectors.secrets import SecretsDetector

PayloadMode = Literal["full", "redacted", "none"]
MAX_KEPT_CHARS = 20_000  # a stored question or answer is cut here: enough for evaluation, bounded for the log


class Redactor:
    """Masks PII and secrets in text (built once per gateway: the detectors load their patterns once)."""

    def __init__(self, detectors: Sequence[Detector] | None = None) -> None:
        self._detectors: list[Detector] = (
            list(detectors) if detectors is not None else [PiiDetector(), SecretsDetector()]
        )

    def redact(self, text: str) -> str:
        """The text with every detected span replaced by its label."""
        findings: list[Finding] = []
        for detector in self._detectors:
            findings.extend(f for f in detector.scan(ScanRequest(text)) if not f.whole_text)
        out: list[str] = []
        cursor = 0
        for f in sorted(findings, key=lambda f: (f.start, -f.end)):
            if f.start < cursor:
                continue  # overlaps a span already masked
            out.append(text[cursor : f.start])
            out.append(f"[{f.label.upper().replace('.', '_')}]")
            cursor = f.end
        out.append(text[cursor:])
        return "".join(out)

    def keep(self, text: str | None, mode: PayloadMode) -> str | None:
        """The text as the payload mode keeps it (None for `none`)."""
        if text is None or mode == "none":
            return None
        text = text[:MAX_KEPT_CHARS]
        return text if mode == "full" else self.redact(text)


def last_user_text(messages: Sequence[dict[str, Any]]) -> str | None:
    """The newest user message's text (parts joined), which is what the outer loop calls the question."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return None
