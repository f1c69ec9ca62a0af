"""Stacked MQAR generator: example layout, pair codes, determinism, query positions, config and source checks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mc_jax.config import ModelConfig
from mc_jax.data import (
    IGNORE_INDEX,
    MQARConfig,
    MQARSource,
    StackedMQARConfig,
    StackedMQARSource,
    mqar_example,
    pair_codes,
    pair_vocab,
    query_key_positions,
    split_pair_codes,
    stacked_mqar_example,
)
from mc_jax.data.common import SeededSource


def _check_structure(cfg: StackedMQARConfig, ex: dict[str, np.ndarray]) -> None:
    inputs, labels = ex["inputs"], ex["labels"]
    kv = cfg.num_kv_pairs
    assert inputs.shape == labels.shape == (2 * kv,) == (cfg.seq_len,)
    assert inputs.dtype == labels.dtype == np.int32
    assert inputs.min() >= 0 and inputs.max() < cfg.input_vocab == cfg.num_keys * (cfg.num_values + 1)

    # decode by hand (independently of split_pair_codes)
    keys, values = inputs // (cfg.num_values + 1), inputs % (cfg.num_values + 1) - 1
    ck, cv = keys[:kv], values[:kv]
    assert len(set(ck.tolist())) == kv and np.all((ck >= 0) & (ck < cfg.num_keys))
    assert len(set(cv.tolist())) == kv and np.all((cv >= 0) & (cv < cfg.num_values))
    qk, qv = keys[kv:], values[kv:]
    assert np.all(qv == -1), "queries carry no value"
    assert sorted(qk.tolist()) == sorted(ck.tolist()), "the queries are a permutation of the context keys"
    assert np.all(labels[:kv] == IGNORE_INDEX)
    pair = dict(zip(ck.tolist(), cv.tolist(), strict=True))
    np.testing.assert_array_equal(labels[kv:], [pair[k] for k in qk.tolist()])


@pytest.mark.parametrize("cfg", [
    StackedMQARConfig(num_kv_pairs=4, num_keys=16, num_values=16),
    StackedMQARConfig(num_kv_pairs=8, num_keys=8, num_values=8),  # every key and value used
    StackedMQARConfig(num_kv_pairs=1, num_keys=1, num_values=1),
    StackedMQARConfig(num_kv_pairs=5, num_keys=300, num_values=7),
])
def test_structure(cfg):
    src = StackedMQARSource(cfg, num_examples=40, seed=3)
    for i in range(len(src)):
        _check_structure(cfg, src[i])


def test_query_orders_are_random():
    # the queries do not simply repeat the context order (a fresh permutation per example)
    cfg = StackedMQARConfig(num_kv_pairs=6, num_keys=32, num_values=32)
    src = StackedMQARSource(cfg, num_examples=20, seed=0)
    same = [np.array_equal(src[i]["inputs"][:6] // 33, src[i]["inputs"][6:] // 33) for i in range(20)]
    assert not all(same)


def test_determinism_per_seed_and_index():
    cfg = StackedMQARConfig(num_kv_pairs=4, num_keys=64, num_values=64)
    a = stacked_mqar_example(cfg, seed=5, index=11)
    b = StackedMQARSource(cfg, num_examples=20, seed=5)[11]
    for k in ("inputs", "labels"):
        np.testing.assert_array_equal(a[k], b[k])
    # order of access does not matter
    src = StackedMQARSource(cfg, num_examples=20, seed=5)
    backwards = [src[i]["inputs"] for i in reversed(range(20))][::-1]
    forwards = [src[i]["inputs"] for i in range(20)]
    for x, y in zip(backwards, forwards, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a["inputs"], stacked_mqar_example(cfg, seed=6, index=11)["inputs"])
    assert not np.array_equal(a["inputs"], stacked_mqar_example(cfg, seed=5, index=12)["inputs"])
    assert len({src[i]["inputs"].tobytes() for i in range(20)}) == 20


def test_stream_differs_from_token_mqar_under_the_same_seed():
    # different tasks sharing a seed draw from different streams: the first key of stacked MQAR is not the draw of
    # the token task's generator (checked through the raw rng streams).
    from mc_jax.data.common import example_rng, stream_id
    from mc_jax.data.stacked_mqar import _STACKED_STREAM

    assert _STACKED_STREAM == stream_id("stacked_mqar") != stream_id("mqar")
    first = example_rng(_STACKED_STREAM, 0, 0).integers(1 << 30)
    assert first != example_rng(stream_id("mqar"), 0, 0).integers(1 << 30)


# ---- codes -----------------------------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(num_keys=st.integers(1, 2000), num_values=st.integers(1, 2000), data=st.data())
def test_codes_round_trip(num_keys, num_values, data):
    n = data.draw(st.integers(1, 20))
    keys = np.array(data.draw(st.lists(st.integers(0, num_keys - 1), min_size=n, max_size=n)))
    values = np.array(data.draw(st.lists(st.integers(-1, num_values - 1), min_size=n, max_size=n)))
    codes = pair_codes(keys, values, num_values)
    assert codes.dtype == np.int32
    assert np.all((codes >= 0) & (codes < pair_vocab(num_keys, num_values)))
    k, v = split_pair_codes(codes, num_values)
    np.testing.assert_array_equal(k, keys)
    np.testing.assert_array_equal(v, values)
    kj, vj = split_pair_codes(jnp.asarray(codes), num_values)  # the model decodes jax arrays
    np.testing.assert_array_equal(np.asarray(kj), keys)
    np.testing.assert_array_equal(np.asarray(vj), values)


def test_codes_are_a_bijection_onto_the_vocabulary():
    num_keys, num_values = 5, 3
    keys, values = np.meshgrid(np.arange(num_keys), np.arange(-1, num_values), indexing="ij")
    codes = pair_codes(keys.ravel(), values.ravel(), num_values)
    assert sorted(codes.tolist()) == list(range(pair_vocab(num_keys, num_values))) == list(range(20))
    assert pair_codes(np.array([2]), np.array([-1]), num_values)[0] == 2 * 4  # a query is key * (V + 1)
    assert StackedMQARConfig(num_kv_pairs=2, num_keys=5, num_values=3).input_vocab == 20


def test_configs_whose_codes_overflow_int32_are_refused():
    with pytest.raises(ValueError, match="do not fit in int32"):
        StackedMQARConfig(num_kv_pairs=8, num_keys=50_000, num_values=50_000)
    with pytest.raises(ValueError, match="do not fit in int32"):
        ModelConfig(inputs="pair_table", num_keys=50_000, vocab_size=50_000)
    cfg = StackedMQARConfig(num_kv_pairs=8, num_keys=46_000, num_values=46_000)  # 2.116e9 codes: the largest fit
    for i in range(4):
        inputs = stacked_mqar_example(cfg, 0, i)["inputs"]
        keys, _ = split_pair_codes(inputs.astype(np.int64), cfg.num_values)
        assert np.all(inputs >= 0) and np.all(keys < cfg.num_keys), "codes wrapped around int32"


# ---- query positions -------------------------------------------------------------------------------------------------
def _slow_query_positions(inputs: np.ndarray, num_values: int) -> np.ndarray:
    kv = len(inputs) // 2
    out = np.full(len(inputs), -1)
    for t in range(kv, 2 * kv):
        key = inputs[t] // (num_values + 1)
        for i in range(kv):
            if inputs[i] // (num_values + 1) == key:
                out[t] = i
    return out


def test_query_key_positions_match_a_slow_loop():
    cfg = StackedMQARConfig(num_kv_pairs=7, num_keys=40, num_values=9)
    src = StackedMQARSource(cfg, num_examples=12, seed=2)
    batch = np.stack([src[i]["inputs"] for i in range(12)])
    fast = query_key_positions(batch, cfg.num_values)
    assert fast.shape == batch.shape
    for i, (row, got) in enumerate(zip(batch, fast, strict=True)):
        want = _slow_query_positions(row, cfg.num_values)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(query_key_positions(row, cfg.num_values), want)  # unbatched too
        # the queried context pair holds the label
        ctx_values = row[:7] % 10 - 1
        np.testing.assert_array_equal(ctx_values[got[7:]], src[i]["labels"][7:])
    assert np.all(fast[:, :7] == -1) and np.all(fast[:, 7:] >= 0)
    # every context position is queried exactly once
    assert all(sorted(r[7:].tolist()) == list(range(7)) for r in fast)


def test_query_key_positions_of_a_hand_made_row():
    nv = 4
    keys = np.array([3, 0, 2, 1, 2, 3, 1, 0])
    values = np.array([1, 0, 3, 2, -1, -1, -1, -1])
    inputs = pair_codes(keys, values, nv)
    np.testing.assert_array_equal(query_key_positions(inputs, nv), [-1, -1, -1, -1, 2, 0, 3, 1])


# ---- config and source checks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(num_kv_pairs=0), "num_kv_pairs must be a positive int, got 0"),
    (dict(num_keys=-3), "num_keys must be a positive int, got -3"),
    (dict(num_values=0), "num_values must be a positive int, got 0"),
    (dict(num_kv_pairs=2.0), "num_kv_pairs must be a positive int, got 2.0"),
    (dict(num_keys=True), "num_keys must be a positive int, got True"),
    (dict(num_kv_pairs=8, num_keys=7, num_values=16), r"num_keys \(7\) must be at least num_kv_pairs \(8\)"),
    (dict(num_kv_pairs=8, num_keys=16, num_values=5), r"num_values \(5\) must be at least num_kv_pairs \(8\)"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StackedMQARConfig(**kwargs)


def test_config_at_the_limit_is_accepted():
    cfg = StackedMQARConfig(num_kv_pairs=8, num_keys=8, num_values=8)
    assert cfg.seq_len == 16


def test_source_len_and_index_errors():
    cfg = StackedMQARConfig(num_kv_pairs=2, num_keys=4, num_values=4)
    src = StackedMQARSource(cfg, num_examples=5, seed=1)
    assert isinstance(src, SeededSource) and len(src) == 5
    np.testing.assert_array_equal(src[-1]["inputs"], src[4]["inputs"])
    np.testing.assert_array_equal(src[np.int64(2)]["inputs"], stacked_mqar_example(cfg, 1, 2)["inputs"])
    for bad in (5, -6, 100):
        with pytest.raises(IndexError, match=f"index {bad if bad >= 0 else bad + 5} out of range for a source of 5"):
            src[bad]
    with pytest.raises(ValueError, match="num_examples must be >= 1, got 0"):
        StackedMQARSource(cfg, num_examples=0)
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        StackedMQARSource(cfg, num_examples=3, seed=-1)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        stacked_mqar_example(cfg, seed=-1, index=0)
    assert repr(src) == f"StackedMQARSource({cfg!r}, num_examples=5, seed=1)"


def test_token_mqar_source_is_unchanged_by_the_shared_base():
    cfg = MQARConfig(vocab_size=64, seq_len=16, num_kv_pairs=2)
    src = MQARSource(cfg, num_examples=6, seed=4)
    assert isinstance(src, SeededSource) and len(src) == 6
    for i in (0, 5, -1):
        ex = src[i]
        ref = mqar_example(cfg, 4, i % 6)
        np.testing.assert_array_equal(ex["inputs"], ref["inputs"])
        np.testing.assert_array_equal(ex["labels"], ref["labels"])
    assert not np.array_equal(src[0]["inputs"], MQARSource(cfg, 6, seed=5)[0]["inputs"])
    with pytest.raises(IndexError, match="out of range"):
        src[6]
    assert repr(src) == f"MQARSource({cfg!r}, num_examples=6, seed=4)"


# ---- the min_kv_pairs curriculum -------------------------------------------------------------------------------------
def test_curriculum_examples_are_shorter_examples_padded_without_labels():
    cfg = StackedMQARConfig(num_kv_pairs=6, num_keys=20, num_values=20, min_kv_pairs=2)
    src = StackedMQARSource(cfg, num_examples=200, seed=5)
    sizes = set()
    for i in range(len(src)):
        ex = src[i]
        n = int(np.sum(ex["labels"] != IGNORE_INDEX))
        sizes.add(n)
        assert ex["inputs"].shape == ex["labels"].shape == (12,)
        short = StackedMQARConfig(num_kv_pairs=n, num_keys=20, num_values=20)
        _check_structure(short, {"inputs": ex["inputs"][:2 * n], "labels": ex["labels"][:2 * n]})
        assert np.all(ex["labels"][2 * n:] == IGNORE_INDEX)
        assert np.all(ex["inputs"][2 * n:] == 0), "padding = key 0 without a value"
    assert sizes == set(range(2, 7)), "every size in [min_kv_pairs, num_kv_pairs] occurs"
    # min_kv_pairs == num_kv_pairs (or None) is the fixed-size task, example for example
    fixed = StackedMQARConfig(num_kv_pairs=6, num_keys=20, num_values=20)
    same = StackedMQARConfig(num_kv_pairs=6, num_keys=20, num_values=20, min_kv_pairs=6)
    for i in range(5):
        a, b = stacked_mqar_example(fixed, 1, i), stacked_mqar_example(same, 1, i)
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["labels"], b["labels"])


@pytest.mark.parametrize("bad", [0, 7, -1, 2.5, True])
def test_curriculum_validation(bad):
    with pytest.raises(ValueError, match="min_kv_pairs must be an int in"):
        StackedMQARConfig(num_kv_pairs=6, num_keys=20, num_values=20, min_kv_pairs=bad)
