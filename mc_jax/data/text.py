"""Plain-text language-modelling data: reading text, the shipped tiny corpus, packing.

A token stream ``t_0 .. t_{n-1}`` is cut into windows of ``seq_len + 1`` tokens that
overlap by one token (stride ``seq_len``); window ``i`` gives
``inputs = t[i*L : i*L + L]`` and ``labels = t[i*L + 1 : i*L + L + 1]``. Every token
after the first is a label exactly once. With ``drop_last=True`` the final partial
window (fewer than ``seq_len`` labels) is dropped; otherwise it is padded, with
``pad_id`` in ``inputs`` and ``IGNORE_INDEX`` in ``labels``.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import numpy as np

from mc_jax.data.common import IGNORE_INDEX, Example, check_index
from mc_jax.data.tokenizer import ByteTokenizer, Tokenizer
from mc_jax.ops.utils import ceil_div

TINY_CORPUS_FILE = "tiny_corpus.txt"


def read_text(path: str | os.PathLike[str], *, suffix: str = ".txt", encoding: str = "utf-8") -> str:
    """Read a text file, or every ``*suffix`` file under a directory (sorted, recursive).

    Files of a directory are joined with a newline, in sorted path order.

    Raises:
        ValueError: if the path does not exist, a directory holds no ``*suffix`` file, a
            file cannot be read or decoded with ``encoding``, or the text is empty.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"text path {os.fspath(p)!r} does not exist; pass a file or a directory of {suffix} files.")
    if p.is_dir():
        files = sorted(f for f in p.rglob(f"*{suffix}") if f.is_file())
        if not files:
            raise ValueError(
                f"directory {os.fspath(p)!r} holds no {suffix} files; point at a file or add {suffix} files."
            )
    else:
        files = [p]
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding=encoding))
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(
                f"cannot read {os.fspath(f)!r} as {encoding} text ({err}); check the file's "
                "permissions and encoding, or pass encoding=..."
            ) from err
    text = "\n".join(parts)
    if not text.strip():
        raise ValueError(f"no text found at {os.fspath(p)!r}: the file(s) are empty or whitespace only.")
    return text


def load_tiny_corpus() -> str:
    """The small public-domain corpus shipped with the package (a few KB, always present)."""
    try:
        return importlib.resources.files("mc_jax.data").joinpath(TINY_CORPUS_FILE).read_text("utf-8")
    except (FileNotFoundError, ModuleNotFoundError, TypeError):
        # Source tree without package metadata (or an unusual loader): read next to this file.
        return Path(__file__).with_name(TINY_CORPUS_FILE).read_text("utf-8")


def train_val_split(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Split a token stream into a leading train part and a trailing validation part."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}; 0.1 is typical.")
    tokens = np.asarray(tokens)
    cut = len(tokens) - max(1, round(len(tokens) * val_fraction))
    if cut < 1:
        raise ValueError(f"{len(tokens)} tokens are too few to split; use more text.")
    return tokens[:cut], tokens[cut:]


class PackedTokenSource:
    """Random-access windows over a token stream: ``source[i]`` is ``{"inputs", "labels"}``.

    Args:
        tokens: the 1-D token stream (kept as a read-only int32 array).
        seq_len: ``L``, the length of ``inputs`` and ``labels``.
        drop_last: drop the final partial window (default) instead of padding it.
        pad_id: the ``inputs`` value used to pad the final window when ``drop_last=False``.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, *, drop_last: bool = True, pad_id: int = 0) -> None:
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"tokens must be a 1-D array, got shape {arr.shape}; flatten it first.")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}.")
        self.tokens = arr.astype(np.int32)
        self.tokens.setflags(write=False)
        self.seq_len = seq_len
        self.drop_last = drop_last
        self.pad_id = pad_id
        num_labels = max(len(arr) - 1, 0)
        self._len = num_labels // seq_len if drop_last else ceil_div(num_labels, seq_len)
        if self._len == 0:
            raise ValueError(
                f"{len(arr)} tokens give no window of seq_len={seq_len} "
                f"(need at least {seq_len + 1} with drop_last=True); use more text or a smaller seq_len."
            )

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> Example:
        i = check_index(index, self._len)
        window = self.tokens[i * self.seq_len : i * self.seq_len + self.seq_len + 1]
        inputs = np.full(self.seq_len, self.pad_id, dtype=np.int32)
        labels = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int32)
        inputs[: len(window) - 1] = window[:-1]
        labels[: len(window) - 1] = window[1:]
        return {"inputs": inputs, "labels": labels}

    def __repr__(self) -> str:
        return f"PackedTokenSource({len(self.tokens)} tokens, seq_len={self.seq_len}, windows={self._len})"


def pack_tokens(tokens: np.ndarray, seq_len: int, *, drop_last: bool = True, pad_id: int = 0) -> Example:
    """All windows of :class:`PackedTokenSource` stacked: ``inputs``/``labels`` of shape ``[N, L]``."""
    src = PackedTokenSource(tokens, seq_len, drop_last=drop_last, pad_id=pad_id)
    rows = [src[i] for i in range(len(src))]
    return {
        "inputs": np.stack([r["inputs"] for r in rows]),
        "labels": np.stack([r["labels"] for r in rows]),
    }


def text_source(
    text: str, seq_len: int, tokenizer: Tokenizer | None = None, *, drop_last: bool = True
) -> PackedTokenSource:
    """Tokenize ``text`` (bytes by default) and pack it into ``seq_len`` windows."""
    tok = tokenizer if tokenizer is not None else ByteTokenizer()
    return PackedTokenSource(tok.encode(text), seq_len, drop_last=drop_last)
