"""S-NIAH generator: needle placement, answer labels, determinism and the depth x length grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mc_jax.data import (
    IGNORE_INDEX,
    ByteTokenizer,
    NIAHConfig,
    NIAHSource,
    depth_length_grid,
    evenly_spaced_depths,
    load_tiny_corpus,
)
from mc_jax.data.niah import NOISE_FILLER

DECODE = ByteTokenizer().decode


def _text(tokens: np.ndarray) -> str:
    return DECODE(tokens)


VARIANTS = [
    dict(needle=n, haystack=h, template=t)
    for n, h, t in itertools.product(("passkey", "number", "uuid"), ("noise", "essay"), ("ruler", "compact"))
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v.values()))
def test_layout_and_labels(variant) -> None:
    cfg = NIAHConfig(seq_len=384, **variant)
    src = NIAHSource(cfg, num_examples=8, seed=1)
    tmpl = cfg.template_strings()
    for i in range(len(src)):
        ex = src.example(i)
        item = src[i]
        assert item["inputs"].shape == item["labels"].shape == (cfg.seq_len,)
        assert item["inputs"].dtype == item["labels"].dtype == np.int32
        assert item["inputs"].min() >= 0 and item["inputs"].max() < 256
        text = _text(ex.tokens)
        assert len(ex.tokens) == cfg.seq_len + 1
        fmt = dict(type=cfg.type_name, key=ex.key, value=ex.value)
        # The needle sits where the example says, and the query (with the key) ends the text.
        assert text[ex.needle_start : ex.needle_end] == tmpl.needle.format(**fmt)
        assert text.startswith(tmpl.preamble.format(**fmt))
        assert text.endswith(tmpl.question.format(**fmt) + ex.value)
        # Only the answer is labelled, and the labels spell the value.
        lab = item["labels"]
        pos = np.flatnonzero(lab != IGNORE_INDEX)
        assert len(pos) == cfg.answer_len == len(ex.value)
        np.testing.assert_array_equal(pos, np.arange(cfg.seq_len - cfg.answer_len, cfg.seq_len))
        assert DECODE(lab[pos]) == ex.value
        np.testing.assert_array_equal(lab[pos], ex.answer)
        # Next-token shift: labels[t] == tokens[t+1] and inputs[t] == tokens[t].
        np.testing.assert_array_equal(item["inputs"], ex.tokens[:-1])
        np.testing.assert_array_equal(lab[pos], ex.tokens[pos + 1])


def test_value_formats() -> None:
    def values(**kw):
        src = NIAHSource(NIAHConfig(seq_len=512, **kw), 20, seed=0)
        return [src.example(i).value for i in range(20)]

    for v in values(needle="passkey", passkey_digits=6):
        assert len(v) == 6 and v.isdigit() and v[0] != "0"
    for v in values(needle="number"):
        assert 1_000_000 <= int(v) <= 9_999_999
    for v in values(needle="uuid"):
        parts = v.split("-")
        assert [len(p) for p in parts] == [8, 4, 4, 4, 12] and parts[2][0] == "4"
        int("".join(parts), 16)
    for v in values(needle="uuid", uuid_hex_digits=8, template="compact"):
        assert len(v) == 8
        int(v, 16)


@pytest.mark.parametrize("haystack", ["noise", "essay"])
def test_needle_at_requested_depth(haystack) -> None:
    depths = evenly_spaced_depths(11)
    base = NIAHConfig(seq_len=2048, haystack=haystack, template="compact")
    starts = []
    for cfg in depth_length_grid(base, [2048], depths):
        ex = NIAHSource(cfg, 4, seed=5).example(3)
        # Snapped to a sentence boundary: within one sentence of the requested depth.
        assert abs(ex.depth - cfg.depth) * ex.haystack_len <= 64, (cfg.depth, ex.depth)
        assert ex.needle_start == round(ex.depth * ex.haystack_len)  # no preamble in 'compact'
        text = _text(ex.tokens)
        if ex.needle_start > 0:
            assert text[ex.needle_start - 2 : ex.needle_start] == ". "  # starts a sentence
        starts.append(ex.needle_start)
    assert starts == sorted(starts) and starts[0] == 0
    assert starts[-1] > 0.9 * 2048


def test_noise_haystack_is_the_filler() -> None:
    ex = NIAHSource(NIAHConfig(seq_len=600, haystack="noise", template="compact", depth=0.5), 1).example(0)
    text = _text(ex.tokens)
    hay = text[: ex.needle_start] + text[ex.needle_end + 1 :].split("\n")[0]
    assert hay.startswith(NOISE_FILLER)
    assert NOISE_FILLER in hay


def test_random_depth_varies() -> None:
    src = NIAHSource(NIAHConfig(seq_len=1024, depth=None), 30, seed=2)
    depths = np.array([src.example(i).depth for i in range(30)])
    assert depths.min() < 0.25 and depths.max() > 0.75


def test_essay_tokens_haystack() -> None:
    corpus = ByteTokenizer().encode(load_tiny_corpus())
    cfg = NIAHConfig(seq_len=512, haystack="essay", depth=0.5)
    ex = NIAHSource(cfg, 3, seed=0, essay_tokens=corpus).example(1)
    text = _text(ex.tokens)
    before = text[len(cfg.template_strings().preamble.format(type=cfg.type_name)) : ex.needle_start]
    corpus_text = load_tiny_corpus()
    assert before.strip() and before.strip() in corpus_text + corpus_text  # a (wrapped) window
    with pytest.raises(ValueError, match="haystack='essay'"):
        NIAHSource(NIAHConfig(haystack="noise"), 3, essay_tokens=corpus)
    with pytest.raises(ValueError, match="byte tokens"):
        NIAHSource(cfg, 3, essay_tokens=np.array([1, 300]))


def test_determinism() -> None:
    cfg = NIAHConfig(seq_len=300, haystack="essay")
    a, b = NIAHSource(cfg, 10, seed=4), NIAHSource(cfg, 10, seed=4)
    for i in (0, 3, 9):
        np.testing.assert_array_equal(a[i]["inputs"], b[i]["inputs"])
        np.testing.assert_array_equal(a[i]["labels"], b[i]["labels"])
    assert not np.array_equal(a[0]["inputs"], a[1]["inputs"])
    assert not np.array_equal(a[0]["inputs"], NIAHSource(cfg, 10, seed=5)[0]["inputs"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(seq_len=100), "seq_len >= "),
        (dict(depth=1.5), "depth"),
        (dict(needle="word"), "needle"),
        (dict(haystack="pg19"), "haystack"),
        (dict(template="long"), "template"),
        (dict(passkey_digits=0), "passkey_digits"),
        (dict(uuid_hex_digits=33), "uuid_hex_digits"),
    ],
)
def test_config_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        NIAHConfig(**kwargs)


def test_smallest_allowed_seq_len_works() -> None:
    for needle, template in itertools.product(("passkey", "number", "uuid"), ("ruler", "compact")):
        with pytest.raises(ValueError, match=r"seq_len >= \d+") as info:
            NIAHConfig(seq_len=2, needle=needle, template=template)
        smallest = int(info.value.args[0].split("seq_len >= ")[1].split(" ")[0])
        src = NIAHSource(NIAHConfig(seq_len=smallest, needle=needle, template=template), 20, seed=0)
        for i in range(20):
            assert src[i]["inputs"].shape == (smallest,)


def test_grid() -> None:
    cells = depth_length_grid(NIAHConfig(needle="passkey"), [256, 512], [0.0, 0.5, 1.0])
    assert [(c.seq_len, c.depth) for c in cells] == [
        (256, 0.0), (256, 0.5), (256, 1.0), (512, 0.0), (512, 0.5), (512, 1.0),
    ]  # fmt: skip
    assert all(c.needle == "passkey" for c in cells)
    assert evenly_spaced_depths(5) == (0.0, 0.25, 0.5, 0.75, 1.0)
    with pytest.raises(ValueError):
        evenly_spaced_depths(1)


def test_labels_are_the_next_answer_bytes() -> None:
    """Teacher forcing: the labelled positions of every row are exactly the next tokens of its answer."""
    src = NIAHSource(NIAHConfig(seq_len=256, needle="passkey", template="compact"), 4, seed=0)
    labels = np.stack([src[i]["labels"] for i in range(4)])
    oracle = np.stack([src.example(i).tokens[1:] for i in range(4)])  # perfect next-token predictions
    mask = labels != IGNORE_INDEX
    assert mask.any(axis=-1).all()
    np.testing.assert_array_equal(oracle[mask], labels[mask])
