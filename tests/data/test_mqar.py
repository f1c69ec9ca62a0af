"""MQAR generator: determinism, Zoology structure, constraints."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mc_jax.data import IGNORE_INDEX, MQARConfig, MQARSource, mqar_example


def _check_structure(cfg: MQARConfig, ex: dict[str, np.ndarray]) -> None:
    inputs, labels = ex["inputs"], ex["labels"]
    kv, V, L = cfg.num_kv_pairs, cfg.vocab_size, cfg.seq_len
    assert inputs.shape == labels.shape == (L,)
    assert inputs.dtype == labels.dtype == np.int32
    assert inputs.min() >= 0 and inputs.max() < V

    context = inputs[: 2 * kv]
    keys, values = context[0::2], context[1::2]
    # Keys and values: distinct, each in its half of the vocabulary.
    assert len(set(keys.tolist())) == kv and len(set(values.tolist())) == kv
    assert np.all((keys >= 1) & (keys < V // 2))
    assert np.all((values >= V // 2) & (values < V))
    # The context repeats for every pass.
    for p in range(cfg.num_passes):
        np.testing.assert_array_equal(inputs[p * 2 * kv : (p + 1) * 2 * kv], context)

    pos = np.flatnonzero(labels != IGNORE_INDEX)
    assert len(pos) == kv, "one label per query, and each key is queried once"
    assert np.all(pos >= cfg.context_len) and np.all((pos - cfg.context_len) % 2 == 0)
    pair = dict(zip(keys.tolist(), values.tolist(), strict=True))
    assert sorted(inputs[pos].tolist()) == sorted(keys.tolist())
    for t in pos:
        assert labels[t] == pair[int(inputs[t])], "the label at a queried key is its paired value"

    if not cfg.random_non_queries:
        rest = np.ones(L, bool)
        rest[: cfg.context_len] = False
        rest[pos] = False
        assert np.all(inputs[rest] == 0)


@pytest.mark.parametrize(
    "cfg",
    [
        MQARConfig(vocab_size=8192, seq_len=64, num_kv_pairs=4),
        MQARConfig(vocab_size=128, seq_len=64, num_kv_pairs=16, random_non_queries=False),
        MQARConfig(vocab_size=300, seq_len=256, num_kv_pairs=16, num_passes=2),
        MQARConfig(vocab_size=70, seq_len=16, num_kv_pairs=2, power_a=1.0, random_non_queries=False),
    ],
)
def test_structure(cfg: MQARConfig) -> None:
    src = MQARSource(cfg, num_examples=50, seed=3)
    for i in range(len(src)):
        _check_structure(cfg, src[i])


@settings(max_examples=30, deadline=None)
@given(
    kv=st.integers(1, 12),
    extra=st.integers(0, 40),
    vocab_extra=st.integers(1, 200),
    passes=st.integers(1, 3),
    a=st.sampled_from([0.01, 0.5, 1.0]),
    rnq=st.booleans(),
    seed=st.integers(0, 2**32),
    index=st.integers(0, 10**9),
)
def test_structure_property(kv, extra, vocab_extra, passes, a, rnq, seed, index) -> None:
    seq_len = 2 * kv * passes + 2 * kv + 2 * extra
    cfg = MQARConfig(
        vocab_size=seq_len + vocab_extra,
        seq_len=seq_len,
        num_kv_pairs=kv,
        power_a=a,
        num_passes=passes,
        random_non_queries=rnq,
    )
    _check_structure(cfg, mqar_example(cfg, seed, index))


def test_small_layout_by_hand() -> None:
    # Zoology's docstring shape (kv=2, L=16), with V > L as its constraint requires.
    cfg = MQARConfig(vocab_size=20, seq_len=16, num_kv_pairs=2, random_non_queries=False)
    ex = mqar_example(cfg, 0, 0)
    _check_structure(cfg, ex)
    inputs, labels = ex["inputs"].tolist(), ex["labels"].tolist()
    k1, v1, k2, v2 = inputs[:4]
    assert cfg.context_len == 4 and cfg.num_query_slots == 6
    q1, q2 = inputs.index(k1, 4), inputs.index(k2, 4)
    assert labels[q1] == v1 and labels[q2] == v2
    assert [t for t in range(16) if labels[t] != IGNORE_INDEX] == sorted([q1, q2])


def test_determinism_per_seed_and_index() -> None:
    cfg = MQARConfig()
    a, b = MQARSource(cfg, 100, seed=7), MQARSource(cfg, 100, seed=7)
    for i in (0, 1, 57, 99, -1):
        np.testing.assert_array_equal(a[i]["inputs"], b[i]["inputs"])
        np.testing.assert_array_equal(a[i]["labels"], b[i]["labels"])
    # Access order does not matter.
    fwd = [a[i]["inputs"] for i in range(10)]
    bwd = [a[i]["inputs"] for i in reversed(range(10))][::-1]
    np.testing.assert_array_equal(np.stack(fwd), np.stack(bwd))
    np.testing.assert_array_equal(a[5]["inputs"], mqar_example(cfg, 7, 5)["inputs"])
    # Different indices and seeds give different examples.
    assert not np.array_equal(a[0]["inputs"], a[1]["inputs"])
    assert not np.array_equal(a[0]["inputs"], MQARSource(cfg, 100, seed=8)[0]["inputs"])


def test_power_law_puts_queries_early() -> None:
    def mean_slot(a: float) -> float:
        cfg = MQARConfig(vocab_size=1024, seq_len=512, num_kv_pairs=8, power_a=a, random_non_queries=False)
        src = MQARSource(cfg, 200, seed=0)
        slots = [(np.flatnonzero(src[i]["labels"] != IGNORE_INDEX) - cfg.context_len) // 2 for i in range(200)]
        return float(np.mean(np.concatenate(slots)))

    near, uniform = mean_slot(0.01), mean_slot(1.0)
    assert uniform == pytest.approx((248 - 1) / 2, rel=0.15)  # 248 slots, uniform mean 123.5
    assert near < 0.6 * uniform


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(seq_len=63), "even"),
        (dict(seq_len=0), "even"),
        (dict(vocab_size=64, seq_len=64), "vocab_size"),
        (dict(seq_len=64, num_kv_pairs=17), "4\\*num_kv_pairs"),
        (dict(seq_len=64, num_kv_pairs=8, num_passes=4), "too short"),
        (dict(num_kv_pairs=0), "num_kv_pairs"),
        (dict(num_passes=0), "num_passes"),
        (dict(power_a=0.0), "power_a"),
        (dict(power_a=1.5), "power_a"),
    ],
)
def test_constraints_raise(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        MQARConfig(**kwargs)


def test_source_validation() -> None:
    with pytest.raises(ValueError, match="num_examples"):
        MQARSource(MQARConfig(), 0)
    with pytest.raises(ValueError, match="seed"):
        MQARSource(MQARConfig(), 10, seed=-1)
    src = MQARSource(MQARConfig(), 10)
    with pytest.raises(IndexError):
        src[10]
    assert len(src) == 10
