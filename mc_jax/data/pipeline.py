"""grain pipelines: shard per host, shuffle, repeat for epochs, batch; resumable iterators.

Order of operations: ``source -> [trim to a multiple of shard_count] -> shard -> shuffle
-> repeat(num_epochs) -> batch``. Each host reads the disjoint strided shard
``source[shard_index::shard_count]``. With ``shuffle`` the shard is permuted by ``seed``,
differently in each epoch. Batches may span an epoch boundary; with ``drop_remainder``
only the final partial batch is dropped.

The iterator of :func:`make_iterator` is a grain ``DatasetIterator``: ``it.get_state()``
is a small JSON-serialisable dict (save it with the model checkpoint, e.g. orbax
``JsonSave``) and ``it.set_state(state)`` resumes exactly where it left off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

import grain
import jax

T_co = TypeVar("T_co", covariant=True)


class RandomAccessSource(Protocol[T_co]):
    """Anything with ``__len__`` and ``__getitem__`` (all sources in this package)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> T_co: ...


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How examples are sharded, shuffled, repeated and batched.

    Attributes:
        batch_size: examples per batch (per host).
        seed: shuffle seed (use the same on all hosts).
        shuffle: permute examples (differently each epoch).
        num_epochs: passes over the shard; ``None`` repeats forever.
        shard_index: this host's shard; ``None`` means ``jax.process_index()``.
        shard_count: number of shards; ``None`` means ``jax.process_count()``.
        drop_remainder: drop the last partial batch.
        even_shards: drop the last ``len(source) % shard_count`` examples so that every
            shard has the same size (and every host the same number of steps).
    """

    batch_size: int
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1
    shard_index: int | None = None
    shard_count: int | None = None
    drop_remainder: bool = True
    even_shards: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}.")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None (forever), got {self.num_epochs}.")
        if (self.shard_index is None) != (self.shard_count is None):
            raise ValueError("give both shard_index and shard_count, or neither (to use the JAX process index/count).")
        if self.shard_count is not None and self.shard_count < 1:
            raise ValueError(f"shard_count must be >= 1, got {self.shard_count}.")
        if (
            self.shard_index is not None
            and self.shard_count is not None
            and not 0 <= self.shard_index < self.shard_count
        ):
            raise ValueError(f"shard_index must be in [0, {self.shard_count}), got {self.shard_index}.")

    def resolved_shard(self) -> tuple[int, int]:
        """``(shard_index, shard_count)``, defaulting to this JAX process."""
        if self.shard_index is None or self.shard_count is None:
            return jax.process_index(), jax.process_count()
        return self.shard_index, self.shard_count


def build_dataset(source: RandomAccessSource[Any], config: PipelineConfig) -> grain.MapDataset:
    """The batched ``grain.MapDataset`` for ``source`` under ``config``."""
    index, count = config.resolved_shard()
    ds = grain.MapDataset.source(source)
    if config.even_shards:
        ds = ds[: len(ds) // count * count]
    ds = ds[index::count]
    shard_size = len(ds)
    if shard_size == 0:
        raise ValueError(
            f"shard {index} of {count} is empty ({len(source)} examples); use more examples or fewer shards."
        )
    if config.shuffle:
        ds = ds.seed(config.seed).shuffle()
    ds = ds.repeat(config.num_epochs)
    ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
    if config.num_epochs is not None and len(ds) == 0:
        raise ValueError(
            f"no full batch: {shard_size} examples x {config.num_epochs} epoch(s) in shard {index} of {count} "
            f"are fewer than batch_size={config.batch_size}; lower batch_size, "
            "add examples or epochs, or set drop_remainder=False."
        )
    return ds


def make_dataset(
    source: RandomAccessSource[Any],
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    shard_index: int | None = None,
    shard_count: int | None = None,
    drop_remainder: bool = True,
    even_shards: bool = True,
) -> grain.MapDataset:
    """Shard, shuffle, repeat and batch ``source``; see :class:`PipelineConfig` for the arguments."""
    config = PipelineConfig(
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        shard_index=shard_index,
        shard_count=shard_count,
        drop_remainder=drop_remainder,
        even_shards=even_shards,
    )
    return build_dataset(source, config)


def make_iterator(
    dataset: grain.MapDataset, state: Mapping[str, Any] | None = None, *, prefetch_threads: int = 0
) -> grain.DatasetIterator:
    """An iterator over ``dataset``, optionally resumed from a saved ``get_state()``.

    ``prefetch_threads=0`` reads in the calling thread (deterministic and cheapest on
    small CPUs); a positive value prefetches with that many threads.
    """
    if prefetch_threads < 0:
        raise ValueError(f"prefetch_threads must be >= 0, got {prefetch_threads}.")
    read_options = grain.ReadOptions(num_threads=prefetch_threads, prefetch_buffer_size=2 * prefetch_threads)
    it = iter(dataset.to_iter_dataset(read_options))
    if state is not None:
        it.set_state(dict(state))
    return it
