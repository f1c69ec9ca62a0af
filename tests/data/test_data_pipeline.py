"""grain pipelines: batching, epochs, shuffling, sharding, exact iterator resumption."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mc_jax.data import MQARConfig, MQARSource, make_dataset, make_iterator


class IndexSource:
    """Example ``i`` is ``{"idx": i}``, so batches show which examples they hold."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"idx": np.int64(i), "x": np.full(3, i, np.int32)}


def _ids(ds) -> list[int]:
    return [int(i) for b in (ds[j] for j in range(len(ds))) for i in b["idx"]]


def test_batches_and_epochs_without_shuffle() -> None:
    ds = make_dataset(IndexSource(10), batch_size=4, shuffle=False, num_epochs=2, shard_index=0, shard_count=1)
    assert len(ds) == 5  # 20 examples // 4
    assert ds[0]["x"].shape == (4, 3) and ds[0]["x"].dtype == np.int32
    assert _ids(ds) == list(range(10)) * 2
    ds = make_dataset(IndexSource(10), batch_size=4, shuffle=False, shard_index=0, shard_count=1, drop_remainder=False)
    assert [len(ds[i]["idx"]) for i in range(len(ds))] == [4, 4, 2]


def test_shuffle_per_epoch_and_seed() -> None:
    def ids(seed):
        return _ids(make_dataset(IndexSource(32), batch_size=8, seed=seed, num_epochs=2, shard_index=0, shard_count=1))

    a = ids(0)
    e1, e2 = a[:32], a[32:]
    assert sorted(e1) == sorted(e2) == list(range(32))  # each epoch is a permutation
    assert e1 != list(range(32)) and e1 != e2  # shuffled, and reshuffled each epoch
    assert ids(0) == a and ids(1) != a


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_shards_disjoint_and_covering(count: int) -> None:
    n = 23
    shards = [
        _ids(make_dataset(IndexSource(n), batch_size=1, seed=3, shard_index=i, shard_count=count, even_shards=False))
        for i in range(count)
    ]
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) == n and set(flat) == set(range(n))
    # even_shards: equal sizes (same number of steps on every host), still disjoint.
    even = [
        _ids(make_dataset(IndexSource(n), batch_size=1, seed=3, shard_index=i, shard_count=count)) for i in range(count)
    ]
    assert {len(s) for s in even} == {n // count}
    flat = [i for s in even for i in s]
    assert len(set(flat)) == len(flat) and set(flat) == set(range(n // count * count))


def test_default_shard_is_the_jax_process() -> None:
    a = make_dataset(IndexSource(12), batch_size=3, seed=5)
    b = make_dataset(IndexSource(12), batch_size=3, seed=5, shard_index=0, shard_count=1)
    assert _ids(a) == _ids(b)


@pytest.mark.parametrize("threads", [0, 2])
def test_iterator_resume_matches_uninterrupted(threads: int) -> None:
    ds = make_dataset(IndexSource(50), batch_size=4, seed=11, num_epochs=3, shard_index=1, shard_count=2)
    full = [b["idx"].tolist() for b in make_iterator(ds, prefetch_threads=threads)]
    assert len(full) == len(ds) == 75 // 4

    it = make_iterator(ds, prefetch_threads=threads)
    head = [next(it)["idx"].tolist() for _ in range(7)]  # crosses into the second epoch
    state = json.loads(json.dumps(it.get_state()))  # storable as JSON
    resumed = make_iterator(ds, state, prefetch_threads=threads)
    assert head + [b["idx"].tolist() for b in resumed] == full
    # set_state rewinds an existing iterator too.
    it.set_state(state)
    assert next(it)["idx"].tolist() == full[7]


def test_resume_with_mqar_source() -> None:
    src = MQARSource(MQARConfig(vocab_size=256, seq_len=32, num_kv_pairs=4), 64, seed=1)
    ds = make_dataset(src, batch_size=8, seed=2, num_epochs=None, shard_index=0, shard_count=1)
    it = make_iterator(ds)
    for _ in range(10):  # beyond one epoch of 8 batches
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    again = make_iterator(ds, state)
    for want in expected:
        got = next(again)
        assert got["inputs"].shape == (8, 32)
        np.testing.assert_array_equal(got["inputs"], want["inputs"])
        np.testing.assert_array_equal(got["labels"], want["labels"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2, num_epochs=0), "num_epochs"),
        (dict(batch_size=2, shard_index=0), "both"),
        (dict(batch_size=2, shard_index=2, shard_count=2), "shard_index"),
        (dict(batch_size=2, shard_index=0, shard_count=0), "shard_count"),
        (dict(batch_size=2, seed=-1), "seed"),
        (dict(batch_size=20, shard_index=0, shard_count=1), "no full batch"),
        (dict(batch_size=1, shard_index=0, shard_count=20), "empty"),
    ],
)
def test_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_dataset(IndexSource(10), **kwargs)
    with pytest.raises(ValueError, match="prefetch_threads"):
        make_iterator(make_dataset(IndexSource(10), batch_size=2), prefetch_threads=-1)
