"""Tokenizers: a byte-level one (the default, no dependencies) and an optional local BPE.

Both follow the :class:`Tokenizer` protocol: ``encode(str) -> int32[N]``,
``decode(ids) -> str`` and ``vocab_size``. The BPE tokenizer needs the ``tokenizers``
package, imported only when a BPE tokenizer is built or loaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

BYTE_VOCAB_SIZE: int = 256


@runtime_checkable
class Tokenizer(Protocol):
    """What the data layer needs from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: token ``b`` is byte value ``b``; the vocabulary has 256 ids.

    ``decode(encode(s)) == s`` for every Python string without lone surrogates. Decoding
    an arbitrary id sequence replaces invalid UTF-8 with U+FFFD.
    """

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB_SIZE

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= BYTE_VOCAB_SIZE):
            raise ValueError(
                f"byte token ids must be in [0, {BYTE_VOCAB_SIZE}), got values in "
                f"[{arr.min()}, {arr.max()}]; drop ignore labels (-100) before decoding."
            )
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


def _import_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "BPE tokenization needs the optional `tokenizers` package; install it with "
            "`pip install 'mc_jax[bpe]'` (or `pip install tokenizers`), or use the default byte tokenizer."
        ) from err
    return tokenizers


class BPETokenizer:
    """A byte-level BPE tokenizer from the ``tokenizers`` package (trained locally).

    Build one with :meth:`train` or :meth:`load`; save it with :meth:`save`.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 4096,
        special_tokens: Sequence[str] = ("<|endoftext|>",),
    ) -> BPETokenizer:
        """Train a byte-level BPE on ``texts`` (an iterable of text chunks).

        The 256-byte initial alphabet guarantees that any string can be encoded.
        """
        if vocab_size < BYTE_VOCAB_SIZE + len(special_tokens):
            raise ValueError(
                f"vocab_size ({vocab_size}) must be at least {BYTE_VOCAB_SIZE + len(special_tokens)} "
                "(the 256-byte alphabet plus the special tokens); increase vocab_size."
            )
        tk = _import_tokenizers()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(special_tokens),
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BPETokenizer:
        """Load a tokenizer saved by :meth:`save` (a ``tokenizers`` JSON file)."""
        if not os.path.isfile(path):
            raise ValueError(f"no tokenizer file at {os.fspath(path)!r}; train one and save it first.")
        return cls(_import_tokenizers().Tokenizer.from_file(os.fspath(path)))

    def save(self, path: str | os.PathLike[str]) -> None:
        self._tok.save(os.fspath(path))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return str(self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)]))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def load_tokenizer(spec: str | os.PathLike[str] = "byte") -> ByteTokenizer | BPETokenizer:
    """``"byte"`` -> :class:`ByteTokenizer`; anything else is the path of a BPE file saved by
    :meth:`BPETokenizer.save` (what ``mc-prepare --bpe-vocab N`` writes)."""
    if os.fspath(spec) == "byte":
        return ByteTokenizer()
    return BPETokenizer.load(spec)
