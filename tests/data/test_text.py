"""Text reading, the shipped tiny corpus, and packing into next-token windows."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mc_jax.data.text as text_mod
from mc_jax.data import (
    IGNORE_INDEX,
    ByteTokenizer,
    PackedTokenSource,
    load_tiny_corpus,
    pack_tokens,
    read_text,
    text_source,
    train_val_split,
)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), seq_len=st.integers(1, 40))
def test_packing_drop_last(n: int, seq_len: int) -> None:
    tokens = np.arange(100, 100 + n)
    if n - 1 < seq_len:
        with pytest.raises(ValueError, match="no window"):
            PackedTokenSource(tokens, seq_len)
        return
    packed = pack_tokens(tokens, seq_len)
    inputs, labels = packed["inputs"], packed["labels"]
    num = (n - 1) // seq_len
    assert inputs.shape == labels.shape == (num, seq_len)
    assert inputs.dtype == labels.dtype == np.int32
    # Shifted by one, and windows tile the stream: only a tail shorter than seq_len is dropped.
    np.testing.assert_array_equal(labels, inputs + 1)
    np.testing.assert_array_equal(inputs.reshape(-1), tokens[: num * seq_len])
    np.testing.assert_array_equal(labels.reshape(-1), tokens[1 : num * seq_len + 1])
    assert (n - 1) - num * seq_len < seq_len


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), seq_len=st.integers(1, 40))
def test_packing_keep_last_loses_no_token(n: int, seq_len: int) -> None:
    tokens = np.arange(1, n + 1)
    packed = pack_tokens(tokens, seq_len, drop_last=False, pad_id=0)
    inputs, labels = packed["inputs"], packed["labels"]
    assert len(inputs) == -(-(n - 1) // seq_len)
    real = labels != IGNORE_INDEX
    # Every token after the first is a label exactly once, in order; every token is an input.
    np.testing.assert_array_equal(labels[real], tokens[1:])
    np.testing.assert_array_equal(inputs[real], tokens[:-1])
    assert np.all(inputs[~real] == 0)
    assert real[:-1].all()  # padding only in the last row


def test_source_indexing() -> None:
    src = PackedTokenSource(np.arange(21), 5)
    assert len(src) == 4
    np.testing.assert_array_equal(src[-1]["inputs"], [15, 16, 17, 18, 19])
    np.testing.assert_array_equal(src[-1]["labels"], [16, 17, 18, 19, 20])
    with pytest.raises(IndexError):
        src[4]
    with pytest.raises(ValueError, match="1-D"):
        PackedTokenSource(np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="seq_len"):
        PackedTokenSource(np.arange(10), 0)


def test_text_source_bytes() -> None:
    src = text_source("hello world!", seq_len=4)
    assert len(src) == 2
    assert ByteTokenizer().decode(src[0]["inputs"]) == "hell"
    assert ByteTokenizer().decode(src[0]["labels"]) == "ello"


def test_train_val_split() -> None:
    train, val = train_val_split(np.arange(100), 0.1)
    assert len(train) == 90 and len(val) == 10 and val[0] == 90
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(np.arange(100), 1.0)
    with pytest.raises(ValueError, match="too few"):
        train_val_split(np.arange(1), 0.5)


def test_read_text_file_and_directory(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "skip.md").write_text("not text", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third", encoding="utf-8")
    assert read_text(tmp_path / "a.txt") == "first"
    assert read_text(tmp_path) == "first\nsecond\nthird"
    assert read_text(str(tmp_path / "sub")) == "third"


def test_read_text_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no \.txt files"):
        read_text(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        read_text(tmp_path / "blank.txt")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa not utf-8")
    with pytest.raises(ValueError, match="cannot read"):
        read_text(tmp_path / "bad.txt")
    assert read_text(tmp_path / "bad.txt", encoding="latin-1").endswith("not utf-8")


def test_tiny_corpus() -> None:
    text = load_tiny_corpus()
    assert len(text) > 4000 and text.isascii()
    assert "Shall I compare thee to a summer's day?" in text
    on_disk = Path(text_mod.__file__).with_name(text_mod.TINY_CORPUS_FILE).read_text("utf-8")
    assert text == on_disk
    assert len(text_source(text, seq_len=256)) > 10


def test_tiny_corpus_fallback_without_resources(monkeypatch) -> None:
    def broken(_package):
        raise ModuleNotFoundError("no package metadata")

    monkeypatch.setattr(importlib.resources, "files", broken)
    assert "Four score and seven years ago" in load_tiny_corpus()
