"""The embedding model of knowledge bases, loaded on first use and shared by ingestion and retrieval.

Owns: choosing the model from `rag.embeddings` (auto: MiniLM when installed), loading it once under a lock, and
encoding in a worker thread so the event loop keeps serving. Must not: download anything.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gengate.embed.minilm import DIMENSION, INSTALL_HINT, MiniLMEncoder, ModelNotInstalled, available
from gengate.errors import ConfigError

MODEL_NAME = "all-MiniLM-L6-v2"
NONE = "none"


class Embedder:
    """Dense embeddings for chunks and queries, or none at all (lexical retrieval only)."""

    def __init__(self, mode: str) -> None:
        if mode == "minilm" and not available():
            raise ConfigError(f"rag.embeddings is 'minilm' but {INSTALL_HINT}")
        self.name = MODEL_NAME if mode != NONE and available() else NONE
        self.dimension = DIMENSION
        self._encoder: MiniLMEncoder | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """True when dense vectors are produced."""
        return self.name != NONE

    def _model(self) -> MiniLMEncoder:
        with self._lock:
            if self._encoder is None:
                try:
                    self._encoder = MiniLMEncoder()
                except ModelNotInstalled as exc:
                    raise ConfigError(str(exc)) from None
            return self._encoder

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Unit vectors [len(texts), dimension] (blocking: call from a worker thread)."""
        return self._model().encode(list(texts))

    async def aencode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """`encode` in a worker thread."""
        return await asyncio.to_thread(self.encode, texts)
