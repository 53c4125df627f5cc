"""The built-in `offline` provider: deterministic answers and embeddings with no model and no network.

It says plainly what it is. RAG apps (later) use it to answer by extracting cited sentences; on a bare model
route it echoes a short, honest summary of the request. Embeddings are feature-hashed bags of words (a
baseline, not a semantic model). Token counts are word-piece approximations, reported as usage.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from gengate.errors import RequestError
from gengate.providers.base import Chunk, UpstreamCall

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
EMBED_DIM = 256


def count_tokens(text: str) -> int:
    """Approximate tokens: words and punctuation marks."""
    return len(_TOKEN.findall(text))


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def offline_reply(messages: list[dict[str, Any]]) -> str:
    """The deterministic answer for a conversation."""
    last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    words = last_user.split()
    snippet = " ".join(words[:24]) + (" …" if len(words) > 24 else "")
    return (
        "This is gengate's offline provider: no language model is configured for this route, so no answer was "
        f"generated. Your message had {len(words)} words"
        + (f": “{snippet}”." if snippet else ".")
        + " Configure an upstream provider (or the local model) in gengate.yaml to get real answers."
    )


def hash_embedding(text: str, dim: int = EMBED_DIM) -> list[float]:
    """A signed feature-hashing embedding of lower-cased word unigrams, L2-normalised."""
    vec = [0.0] * dim
    for token in _TOKEN.findall(text.lower()):
        digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % dim
        vec[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec] if norm else vec


def _encode(vector: list[float], as_base64: bool) -> list[float] | str:
    """OpenAI's `encoding_format: base64` is little-endian float32 bytes, base64-encoded."""
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


class OfflineProvider:
    """Answers deterministically, streams word by word, embeds by feature hashing."""

    def __init__(self, name: str = "offline") -> None:
        self.name = name

    def _answer(self, call: UpstreamCall) -> tuple[str, int, int]:
        messages = call.payload.get("messages") or []
        text = offline_reply(messages)
        prompt = sum(count_tokens(_text_of(m.get("content"))) + 4 for m in messages)
        completion = count_tokens(text)
        limit = call.payload.get("max_completion_tokens") or call.payload.get("max_tokens")
        if isinstance(limit, int) and completion > limit:
            pieces = text.split(" ")
            text = " ".join(pieces[: max(1, limit)])
            completion = count_tokens(text)
        return text, prompt, completion

    async def complete(self, call: UpstreamCall) -> dict[str, Any]:
        """A whole answer."""
        text, prompt, completion = self._answer(call)
        return {
            "id": f"chatcmpl-{call.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        """The same answer, one word per chunk, then a usage chunk."""
        text, prompt, completion = self._answer(call)
        base = {
            "id": f"chatcmpl-{call.request_id}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": call.model,
        }
        yield {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            yield {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield {
            **base,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    async def embed(self, call: UpstreamCall) -> dict[str, Any]:
        """Feature-hashing embeddings for a string or a list of strings."""
        raw = call.payload.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
            raise RequestError("input must be a non-empty string or list of strings", param="input")
        dims = call.payload.get("dimensions")
        dim = dims if isinstance(dims, int) and 0 < dims <= 4096 else EMBED_DIM
        as_base64 = call.payload.get("encoding_format") == "base64"
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(hash_embedding(t, dim), as_base64)}
            for i, t in enumerate(inputs)
        ]
        tokens = sum(count_tokens(t) for t in inputs)
        return {
            "object": "list",
            "data": data,
            "model": call.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def aclose(self) -> None:
        """Nothing to release."""
