"""The whole-sequence (training / prefill) form of Memory Caching: the stages of :mod:`mc_jax.ops.stages` in order.

compress (per ``init``) -> cached keys and weights (per ``segmentation``) -> aggregation weights -> read (per
layout, or from the tokens where ``stages.read_tokens`` gives one) -> combine (the last three as one swappable
stage, ``weights_read``). The sequence is padded with identity
steps to whole segments / blocks.
"""

from __future__ import annotations

from mc_jax.ops import aggregation as agg
from mc_jax.ops.memories import MemorySpec
from mc_jax.ops.segmentation import num_levels
from mc_jax.ops.stages import (
    CACHED,
    COMPRESS,
    XLA_STAGES,
    Stages,
    online_reader,
    pad_inputs,
    pooled_keys,
)
from mc_jax.ops.utils import ceil_div, state_dtype
from mc_jax.typing import Array, Float, PyTree


def padded_length(t: int, size: int, segmentation: str, init: str) -> tuple[int, int]:
    """``(length, levels)``: ``t`` rounded up to whole blocks (log segmentation compresses only the groups some token
    reads, all of them whole: no padding to a level's group size)."""
    del segmentation, init
    return ceil_div(t, size) * size, num_levels(ceil_div(t, size))


def mc_sequence(
    q: Float[Array, "b t h dk"],
    k: Float[Array, "b t h dk"],
    v: Float[Array, "b t h dv"],
    u: Float[Array, "b t h dk"] | None,
    gates: dict[str, Float[Array, "b t h"]],
    init_state: PyTree,
    spec: MemorySpec,
    *,
    aggregation: str,
    segmentation: str,
    segment_size: int,
    top_k: int | None,
    init: str,
    pool: str,
    chunk: int,
    stages: Stages = XLA_STAGES,
) -> Float[Array, "b t h dv"]:
    """Memory Caching over a whole sequence from ``init_state`` (leaves ``[b, h, ...]``); inputs validated, gates
    completed. ``stages``: the implementation of each swappable stage (:class:`~mc_jax.ops.stages.Stages`)."""
    b, t, h, _ = q.shape
    size = segment_size
    length, levels = padded_length(t, size, segmentation, init)
    q, k, v, u, gates, valid = pad_inputs(q, k, v, u, gates, length)
    sd = state_dtype()
    q, k, v = (x.astype(sd) for x in (q, k, v))
    u = None if u is None else u.astype(sd)

    comp = COMPRESS[init](spec, k, v, gates, valid, init_state, size=size,
                          levels=levels if segmentation == "log" else 1, chunk=chunk, state_pass=stages.state_pass)
    read_online, online_layer = online_reader(spec, comp.online, comp.run, chunk, (b, length, h))
    y_online = read_online(q, k, gates)

    keys = pooled_keys(k, valid, t, size, pool)
    cached = CACHED[segmentation](comp, keys, agg.content_u(aggregation, u), size=size, levels=levels, pool=pool)
    read_tokens = lambda gamma: stages.read_tokens(spec, q, k, v, gates, init_state, gamma, segmentation=segmentation,
                                                   segment_size=size, init=init, aggregation=aggregation)
    y = stages.weights_read(spec, cached, keys, u, q, y_online, online_layer, size=size, aggregation=aggregation,
                            top_k=top_k, stages=stages, read_tokens=read_tokens)
    return y[:, :t]
