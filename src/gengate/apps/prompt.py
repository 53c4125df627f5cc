"""What an app sends to its model and what it returns: numbered sources, the conversation, citations.

Owns: the sources block of the system prompt, which client messages reach the model, the query used for
retrieval, and the citation records of an answer (the documented `gengate.citations` extension field). Must
not: retrieve, call models or check content.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gengate.errors import RequestError

SNIPPET_CHARS = 240
_REF = re.compile(r"\[(\d{1,3})\]")


@dataclass(frozen=True, slots=True)
class Source:
    """One permitted chunk given to the model (or the extractive answerer) as source `[ref]`."""

    ref: int
    kb: str
    doc_id: str
    version: int
    title: str
    text: str
    chunk_id: int
    score: float

    def citation(self) -> dict[str, Any]:
        """The citation record returned to the caller."""
        snippet = " ".join(self.text.split())
        if len(snippet) > SNIPPET_CHARS:
            snippet = snippet[: SNIPPET_CHARS - 1].rsplit(" ", 1)[0] + "…"
        return {
            "ref": self.ref, "knowledge_base": self.kb, "document_id": self.doc_id, "version": self.version,
            "title": self.title, "snippet": snippet, "chunk_id": self.chunk_id, "score": round(self.score, 4),
        }  # fmt: skip


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def retrieval_query(messages: Sequence[dict[str, Any]]) -> str:
    """The text to retrieve for: the last user message (RequestError when there is none)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            text = _text_of(message.get("content")).strip()
            if text:
                return text
            break
    raise RequestError("an app needs a non-empty user message to answer", param="messages")


def model_messages(system_prompt: str, sources: Sequence[Source], messages: Sequence[dict[str, Any]]) -> list[Any]:
    """The conversation the app's model sees: the app's own system prompt with the sources, then the client's
    user and assistant turns. Client system messages are dropped: the app's instructions are not negotiable."""
    blocks = [f"[{s.ref}] {s.title}\n{s.text}" for s in sources]
    system = system_prompt + ("\n\nSources:\n\n" + "\n\n".join(blocks) if blocks else "")
    kept = [dict(m) for m in messages if m.get("role") in ("user", "assistant", "tool")]
    return [{"role": "system", "content": system}, *kept]


def cited(answer: str, sources: Sequence[Source]) -> list[Source]:
    """The sources an answer refers to as `[n]`, in order of first use; all of them when it names none."""
    by_ref = {s.ref: s for s in sources}
    order: list[Source] = []
    for match in _REF.finditer(answer):
        source = by_ref.get(int(match.group(1)))
        if source is not None and source not in order:
            order.append(source)
    return order or list(sources)
