"""The detector protocol and the values it speaks: stages, findings, scan requests.

A detector is a small object with a `name`, a `version` and one method, `scan(request) -> list[Finding]`. It
must be pure (no I/O, no global state, nothing done at import time) and fast; anything it loads (patterns,
a trained artifact) is loaded once when it is built. Findings never carry the raw sensitive value beyond its
span in the text that was scanned; recording layers store only type, span, score and a keyed hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Stage(StrEnum):
    """Where in a request's life text is checked."""

    INPUT = "input"  # what the user sent
    CONTEXT = "context"  # retrieved documents and tool results, before they reach the model
    OUTPUT = "output"  # what the model said


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a detector found.

    `label` is a stable machine name such as `pii.email`, `secret.aws_access_key`, `injection`, `topic.financial
    _advice`, `competitor`, `leak.canary`, `commitment.price`. `start`/`end` are character offsets into the scanned
    text (both 0 for whole-text findings). `score` is in [0, 1]. `explanation` is for humans and must not repeat
    the sensitive value.
    """

    label: str
    start: int
    end: int
    score: float
    detector: str
    explanation: str = ""

    @property
    def whole_text(self) -> bool:
        """True for findings about the text as a whole rather than a span."""
        return self.start == self.end == 0


@dataclass(frozen=True, slots=True)
class ScanRequest:
    """Text to scan, with what a detector may need to know about where it came from."""

    text: str
    stage: Stage = Stage.INPUT
    # Stage-specific extras: e.g. the system prompt (for leak checks), canary tokens, the app's name.
    system_prompt: str = ""
    canaries: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


class Detector(Protocol):
    """What the guard pipeline needs from a detector."""

    name: str
    version: str

    def scan(self, request: ScanRequest) -> list[Finding]:
        """Findings in the request's text (empty when nothing was found)."""
        ...
