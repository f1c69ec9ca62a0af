"""Tiling of the Pallas kernels inside ``memory_caching`` (the kernels' own defaults are in their ``config.py``)."""

from __future__ import annotations

from mc_jax.kernels.cache_read.config import default_block_q
from mc_jax.kernels._common import resolve_strategy

# Query rows per block of the top-k sparse read: a block of ``bq`` tokens reads at most ``bq * top_k`` states, and
# the work is ``T * top_k`` reads whatever ``bq``, so small blocks (16 rows, the smallest matmul tile) make the
# sparse read apply widely.
SPARSE_BLOCK_CAP = 16


def dense_block_q(segment_size: int) -> int:
    """Query block of the dense read kernel: it divides the segment, so one set of available slots per block."""
    return default_block_q(segment_size, resolve_strategy("auto"))


def sparse_block_q(segment_size: int) -> int:
    """Query block of the sparse read kernel (at most :data:`SPARSE_BLOCK_CAP` rows, dividing the segment)."""
    return default_block_q(segment_size, resolve_strategy("auto"), cap=SPARSE_BLOCK_CAP)


def sparse_pays(segment_size: int, top_k: int, n_slots: int) -> bool:
    """The sparse read reads fewer states than the dense one: ``bq * top_k < n_slots``."""
    return sparse_block_q(segment_size) * top_k < n_slots
