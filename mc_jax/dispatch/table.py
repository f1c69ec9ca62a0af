"""The implementation table: per stage of Memory Caching, an ordered list of algorithms ending in the XLA one.

A stage's implementation at trace time is the first *enabled* entry whose ``applies`` holds for the call (it gets
the stage's arguments and decides on static facts: shapes, settings); the XLA entry always applies. Entries of
``state_pass`` take ``(spec, k, v, gates, state, chunk, valid)``;
entries of ``read_dense`` ``(spec, what, stack, gamma, available, x, *, block, segment_size, aggregation, top_k)``;
entries of ``read_blocked`` ``(spec, what, stacks, gamma, available, x, *, size, aggregation)``; entries of
``read_tokens`` ``(spec, q, k, v, gates, init_state, gamma, *, segmentation, segment_size, init, aggregation)``;
entries of ``weights_read`` ``(spec, cached, keys, u, q, y_online, online_layer, *, size, aggregation, top_k,
stages, read_tokens)`` (see :class:`mc_jax.ops.stages.Stages`).

To add an algorithm: write it as a pure function (math in ``mc_jax.ops``, a kernel in ``mc_jax.kernels``), add an
:class:`Implementation` to the stage's tuple in :data:`TABLE` before the XLA entry, and enable it by name in
:mod:`mc_jax.dispatch.policy` (``KERNELS`` for ``impl="pallas"``, ``AUTO_KERNELS`` per backend for ``impl="auto"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax

from mc_jax.dispatch import cost, tiling
from mc_jax.kernels import cache_read, chunk_state
from mc_jax.ops import reads_causal, reads_deep, reads_gated, reads_grouped, reads_quadratic
from mc_jax.ops.memories import DEEP, LINEAR, SWLA
from mc_jax.ops.stages import (
    Stages,
    online_logit,
    xla_read_blocked,
    xla_read_dense,
    xla_read_tokens,
    xla_state_pass,
    xla_weights_read,
)


def _always(*args, **kwargs) -> bool:
    return True


@dataclass(frozen=True)
class Implementation:
    """One algorithm of one stage.

    Attributes:
        name: the name policies enable it by (``xla`` entries are always enabled).
        fn: the implementation (the stage's signature).
        families: memory families it serves (the policy never enables it for others).
        streaming: whether it serves the streaming form too.
        applies: ``applies(*args, **kwargs) -> bool`` with the stage's arguments, on static facts at trace time.
    """

    name: str
    fn: Callable
    families: tuple = (LINEAR,)
    streaming: bool = False
    applies: Callable[..., bool] = _always


@dataclass(frozen=True)
class Chain:
    """A stage implementation that runs the first of ``entries`` that applies (hashable: a static jit argument)."""

    entries: tuple[Implementation, ...]

    def __call__(self, *args, **kwargs):
        entry = next(e for e in self.entries if e.applies(*args, **kwargs))  # the XLA entry always applies
        return entry.fn(*args, **kwargs)


# --- the kernels' adapters to the stage signatures ---------------------------------------------------------------


def pallas_state_pass(spec, k, v, gates, state, chunk: int, valid):
    """The chunk-state kernel as a ``state_pass`` of the linear family (same results and gradients)."""
    starts, u, final = chunk_state.state_pass(k, v, gates, state, chunk, valid)
    return (starts, u), final


def pallas_read_dense(spec, what, stack, gamma, available, x, *, block, segment_size, aggregation, top_k):
    """The dense read kernel (all slots; ``gamma`` is zero where unavailable)."""
    return cache_read.dense_mix(spec, what, stack, gamma, x, block, block_q=tiling.dense_block_q(segment_size))


def pallas_read_sparse(spec, what, stack, gamma, available, x, *, block, segment_size, aggregation, top_k):
    """The top-k sparse read kernel: per query block only the slots some token of it weights."""
    bq = tiling.sparse_block_q(segment_size)
    idx = cache_read.slot_indices(gamma, bq, bq * top_k)
    return cache_read.sparse_mix(stack, gamma, x, idx, block_q=bq)


def _sparse_applies(spec, what, stack, gamma, available, x, *, block, segment_size, aggregation, top_k) -> bool:
    return what == "read" and aggregation == "ssc" and tiling.sparse_pays(segment_size, top_k, gamma.shape[-1])


def _dense_applies(spec, what, stack, gamma, available, x, **settings) -> bool:
    return what == "read"


# --- exact XLA reads that skip what a token cannot see (mc_jax.ops.reads_causal; whole-sequence form only) -------


def residual_prefix(spec, what, stack, gamma, available, x, *, block, segment_size, aggregation, top_k):
    """Residual over linear memories: the exclusive prefix sum of the states, one read per token."""
    return reads_causal.residual_prefix_read(stack, x, segment_size)


def _residual_applies(spec, what, stack, gamma, available, x, *, block, segment_size, aggregation, top_k) -> bool:
    return aggregation == "residual" and spec.family is LINEAR


def sparse_gather(spec, what, stack, gamma, available, x, *, block, segment_size, aggregation, top_k):
    """ssc: per query block gather the states its tokens selected (cost grows with ``top_k``, not ``N``)."""
    return reads_causal.sparse_read(spec, what, stack, gamma, available, x, top_k=top_k,
                                    block=tiling.sparse_xla_block(segment_size))


def _sparse_gather_applies(spec, what, stack, gamma, available, x, *, block, segment_size, aggregation,
                           top_k) -> bool:
    return aggregation == "ssc" and tiling.sparse_xla_pays(segment_size, top_k, gamma.shape[-1])


def causal_read(spec, what, stack, gamma, available, x, *, block, segment_size, aggregation, top_k):
    """Only the (query block, state) pairs at or below the diagonal, with the read's hand-written VJP; a deep
    memory's read-out as two wide matmuls per block (:func:`mc_jax.ops.reads_deep.causal_deep_read`)."""
    if spec.family.deep and what == "read":
        return reads_deep.causal_deep_read(spec, stack, gamma, available, x, size=segment_size,
                                           block=_causal_block(stack, x, segment_size))
    return reads_causal.causal_read(spec, what, stack, gamma, available, x, size=segment_size,
                                    block=_causal_block(stack, x, segment_size))


def _causal_block(stack, x, segment_size: int) -> int:
    width = max(max(leaf.shape[-2:]) for leaf in jax.tree.leaves(stack))
    return tiling.causal_block(x.shape[1], segment_size, width)


def _causal_applies(spec, what, stack, gamma, available, x, *, block, segment_size, aggregation, top_k) -> bool:
    """Two or more query blocks: the blocks below the last skip the states they cannot see (fewer FLOPs)."""
    return _causal_block(stack, x, segment_size) < x.shape[1]


def blocked_residual(spec, what, stacks, gamma, available, x, *, size, aggregation):
    """Residual over log segmentation's per-level memories of linear memories: one read per token."""
    return reads_causal.residual_blocked_read(stacks, x, size)


def _blocked_residual_applies(spec, what, stacks, gamma, available, x, *, size, aggregation) -> bool:
    return aggregation == "residual" and spec.family is LINEAR


def fused_gate_read(spec, cached, keys, u, q, y_online, online_layer, *, size, aggregation, top_k, stages,
                    read_tokens=None):
    """grm / soup over matrix memories, constant segmentation: the gate softmax per query block fused into the read
    (:func:`mc_jax.ops.reads_gated.gated_read`, its own VJP); no ``[b, t, h, n]`` weights."""
    return reads_gated.gated_read(q, u, online_logit(aggregation, u, keys), y_online, cached.pooled, cached.memories,
                                  size=size, block=_causal_block(cached.memories, q, size))


def _enabled(stage, name: str) -> bool:
    return isinstance(stage, Chain) and any(e.name == name for e in stage.entries)


def _fused_gate_applies(spec, cached, keys, u, q, y_online, online_layer, *, size, aggregation, top_k,
                        stages, read_tokens=None) -> bool:
    """Gated constant-segment reads of matrix memories, unless the dense read kernel is enabled (it comes first) or
    the quadratic form is enabled and pays for this shape (it reads from the tokens, with the weights array)."""
    quadratic_first = _enabled(stages.read_tokens, "quadratic") and _quadratic_pays(
        spec, "constant", aggregation, q.shape[1], size, q.shape[-1], y_online.shape[-1])
    return (aggregation in ("grm", "soup") and cached.layout == "dense" and u is not None and not spec.family.deep
            and not _enabled(stages.read_dense, "cache_read_dense") and not quadratic_first)


def topk_gated_read(spec, cached, keys, u, q, y_online, online_layer, *, size, aggregation, top_k, stages,
                    read_tokens=None):
    """ssc over matrix memories, constant segmentation: the top-k choice per query block, the softmax over the chosen
    logits only and the grouped read (:func:`mc_jax.ops.reads_grouped.topk_gated_read`); no ``[b, t, h, n]``
    weights."""
    length, n = q.shape[1], cached.pooled.shape[1]
    return reads_grouped.topk_gated_read(q, u, online_logit(aggregation, u, keys), y_online, cached.pooled,
                                         cached.memories, size=size, top_k=top_k,
                                         block=tiling.topk_block(length, n),
                                         rows=tiling.grouped_rows(length, n, top_k))


def _topk_gated_applies(spec, cached, keys, u, q, y_online, online_layer, *, size, aggregation, top_k, stages,
                        read_tokens=None) -> bool:
    """ssc over the dense stack of matrix memories, unless the sparse read kernel is enabled (it reads the weights),
    where the grouped read has fewer multiply-adds than the causal read."""
    return (aggregation == "ssc" and cached.layout == "dense" and u is not None and not spec.family.deep
            and not _enabled(stages.read_dense, "cache_read_sparse")
            and cost.grouped_pays(q.shape[1], size, top_k, q.shape[-1], y_online.shape[-1]))


# --- the segment-gated quadratic form (mc_jax.ops.reads_quadratic; whole-sequence form only) ---------------------
# Aggregations it is exact for (soup equals grm for linear memories); not ssc: its gamma keeps top_k states per
# token, and the quadratic form would still visit every (query, key) pair: dense work where ssc's point is k reads.
QUADRATIC_AGGREGATIONS = ("grm", "soup", "residual")


def quadratic(spec, q, k, v, gates, init_state, gamma, *, segmentation, segment_size, init, aggregation):
    """The cached read from the tokens, ``sum_j W[t, s(j)] (q_t . k'_j) v_j``, tiled below the diagonal."""
    return reads_quadratic.token_read(q, k, v, gates, spec.family.readable(init_state), gamma, size=segment_size,
                                      init=init, tile=tiling.quadratic_tile(q.shape[1], segment_size))


def _quadratic_pays(spec, segmentation, aggregation, t, segment_size, dk, dv) -> bool:
    """Constant segments, a sum-of-outer-products state, and fewer FLOPs than the state read
    (:func:`mc_jax.dispatch.cost.quadratic_pays` for the shape ``(T, C, Dk, Dv)``)."""
    return (segmentation == "constant" and aggregation in QUADRATIC_AGGREGATIONS
            and reads_quadratic.outer_product_state(spec)
            and cost.quadratic_pays(aggregation, t, segment_size, dk, dv))


def _quadratic_applies(spec, q, k, v, gates, init_state, gamma, *, segmentation, segment_size, init,
                       aggregation) -> bool:
    return _quadratic_pays(spec, segmentation, aggregation, q.shape[1], segment_size, q.shape[-1], v.shape[-1])


XLA = "xla"
TABLE: dict[str, tuple[Implementation, ...]] = {
    "state_pass": (
        Implementation("chunk_state", pallas_state_pass),
        Implementation(XLA, xla_state_pass, families=(), streaming=True),
    ),
    "read_dense": (
        Implementation("cache_read_sparse", pallas_read_sparse, applies=_sparse_applies),
        Implementation("cache_read_dense", pallas_read_dense, applies=_dense_applies),
        Implementation("residual_prefix", residual_prefix, applies=_residual_applies),
        Implementation("sparse_gather", sparse_gather, families=(LINEAR, SWLA, DEEP), applies=_sparse_gather_applies),
        Implementation("causal_read", causal_read, families=(LINEAR, SWLA, DEEP), applies=_causal_applies),
        Implementation(XLA, xla_read_dense, families=(), streaming=True),
    ),
    "read_blocked": (
        Implementation("blocked_residual", blocked_residual, applies=_blocked_residual_applies),
        Implementation(XLA, xla_read_blocked, families=(), streaming=True),
    ),
    "read_tokens": (
        Implementation("quadratic", quadratic, families=(LINEAR, SWLA), applies=_quadratic_applies),
        Implementation(XLA, xla_read_tokens, families=(), streaming=True),
    ),
    "weights_read": (
        Implementation("fused_gate_read", fused_gate_read, families=(LINEAR, SWLA), applies=_fused_gate_applies),
        Implementation("topk_gated_read", topk_gated_read, families=(LINEAR, SWLA), applies=_topk_gated_applies),
        Implementation(XLA, xla_weights_read, families=()),
    ),
}


def build_stages(enabled: frozenset[str], table: dict[str, tuple[Implementation, ...]] | None = None) -> Stages:
    """:class:`Stages` running, per stage, the enabled entries of ``table`` (default :data:`TABLE`) then XLA.

    A stage with only its XLA entry left gets the plain XLA function (the same static argument as ``xla``).
    """
    table = TABLE if table is None else table
    chains = {}
    for stage, entries in table.items():
        chosen = tuple(e for e in entries if e.name == XLA or e.name in enabled)
        chains[stage] = chosen[0].fn if len(chosen) == 1 else Chain(chosen)
    return Stages(**chains)
