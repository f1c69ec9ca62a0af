"""Byte tokenizer round trip; optional BPE tokenizer."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mc_jax.data import BPETokenizer, ByteTokenizer, Tokenizer, load_tiny_corpus


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_roundtrip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert len(ids) == len(text.encode("utf-8"))
    assert ids.size == 0 or (ids.min() >= 0 and ids.max() < tok.vocab_size)
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text


def test_byte_ids_are_byte_values() -> None:
    tok = ByteTokenizer()
    assert tok.vocab_size == 256
    assert tok.encode("Az\n").tolist() == [65, 122, 10]
    assert tok.encode("é").tolist() == [0xC3, 0xA9]
    assert tok.decode([0xFF]) == "\ufffd"  # invalid UTF-8 is replaced, never raises
    with pytest.raises(ValueError, match="-100"):
        tok.decode([65, -100])
    assert isinstance(tok, Tokenizer)


def test_bpe_without_tokenizers_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    with pytest.raises(ImportError, match="pip install tokenizers"):
        BPETokenizer.train(["some text"], vocab_size=300)


def test_bpe_vocab_size_validation() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(["x"], vocab_size=100)


def test_bpe_train_roundtrip_save_load(tmp_path) -> None:
    pytest.importorskip("tokenizers")
    text = load_tiny_corpus()
    tok = BPETokenizer.train(text.split("\n\n"), vocab_size=400)
    assert isinstance(tok, Tokenizer)
    assert 256 < tok.vocab_size <= 400
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and len(ids) < len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    sample = "Ünïcode → bytes, 123!"
    assert tok.decode(tok.encode(sample)) == sample
    path = tmp_path / "bpe.json"
    tok.save(path)
    again = BPETokenizer.load(path)
    np.testing.assert_array_equal(again.encode(text), ids)
    with pytest.raises(ValueError, match="no tokenizer file"):
        BPETokenizer.load(tmp_path / "missing.json")
