"""Tiling of the Pallas kernels inside ``memory_caching`` (the kernels' own defaults are in their ``config.py``)."""

from __future__ import annotations

from mc_jax.kernels._common import resolve_strategy
from mc_jax.kernels.cache_read.config import default_block_q
from mc_jax.ops.stages import READ_BUDGET
from mc_jax.ops.utils import largest_divisor_at_most

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


# --- the exact XLA reads of mc_jax.ops.reads_causal --------------------------------------------------------------
# Query blocks of the causal read: about this many (the diagonal blocks waste ~1 / (2 * blocks) of the work), more
# where a block would exceed the dense read's budget of live values, at most the max (one unrolled read each).
CAUSAL_BLOCKS, CAUSAL_MAX_BLOCKS = 16, 64
# Query rows per block of the XLA top-k gather (a block reads at most ``bq * top_k`` gathered states per token).
SPARSE_XLA_BLOCK_CAP = 8
# Rows per tile of ssc's grouped read (mc_jax.ops.reads_grouped): one [rows, Dk] x [Dk, Dv] product per pair.
GROUPED_ROWS_CAP = 64
# Logits per head of one query block of ssc's top-k choice (mc_jax.ops.reads_grouped.top_states): transient.
TOPK_LOGITS_BUDGET = 1 << 15


def causal_block(length: int, segment_size: int, width: int) -> int:
    """Query block of the causal read: whole segments dividing ``length``, :data:`CAUSAL_BLOCKS` blocks or more
    (``block x N x width <= READ_BUDGET`` values per head), at most :data:`CAUSAL_MAX_BLOCKS`."""
    n_blocks = length // segment_size
    blocks = min(n_blocks, CAUSAL_BLOCKS)
    while blocks < min(n_blocks, CAUSAL_MAX_BLOCKS) and (
            n_blocks % blocks or (n_blocks // blocks) * segment_size * n_blocks * width > READ_BUDGET):
        blocks += 1
    while n_blocks % blocks:
        blocks -= 1
    return (n_blocks // blocks) * segment_size


def sparse_xla_block(segment_size: int) -> int:
    """Query rows per block of the XLA top-k gather: the largest divisor of the segment up to the cap."""
    return largest_divisor_at_most(segment_size, SPARSE_XLA_BLOCK_CAP)


def grouped_rows(length: int, n_states: int, top_k: int) -> int:
    """Rows per tile of ssc's grouped read: the power of two nearest below ``T * top_k / N`` (the rows per state),
    1 to :data:`GROUPED_ROWS_CAP`, so that the ``N * rows`` rows of the pairs a state change starts cost about as
    much as the ``T * top_k`` chosen rows."""
    rows = 1
    while rows * 2 <= min(GROUPED_ROWS_CAP, length * top_k // max(n_states, 1)):
        rows *= 2
    return rows


def topk_block(length: int, n_states: int) -> int:
    """Query rows per block of ssc's per-block top-k choice: the largest divisor of the length whose ``[block, N]``
    logits per head stay within :data:`TOPK_LOGITS_BUDGET`."""
    return largest_divisor_at_most(length, max(1, TOPK_LOGITS_BUDGET // max(n_states, 1)))


def sparse_xla_pays(segment_size: int, top_k: int, n_states: int) -> bool:
    """The gather reads ``bq * top_k`` states per token; the causal read about ``N / 2``: gather when fewer."""
    return 2 * sparse_xla_block(segment_size) * top_k < n_states


# --- the segment-gated quadratic form of mc_jax.ops.reads_quadratic ----------------------------------------------
# Rows and columns of one (query block, key block) tile: large enough for matmul efficiency, small enough that the
# diagonal tiles' masked-out work (about tile / (2 T) of the total) and a tile's live values stay small.
QUADRATIC_TILE = 128


def quadratic_tile(length: int, segment_size: int) -> int:
    """Tile of the quadratic form: whole segments dividing ``length`` up to :data:`QUADRATIC_TILE` tokens, or a
    divisor of the segment when one segment is longer (a key block then lies inside one segment)."""
    if segment_size > QUADRATIC_TILE:
        return largest_divisor_at_most(segment_size, QUADRATIC_TILE)
    return segment_size * largest_divisor_at_most(length // segment_size, QUADRATIC_TILE // segment_size)
