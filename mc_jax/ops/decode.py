"""Decoding at the cost of one token: the streaming form of Memory Caching for a single new token.

:func:`mc_stream` pads every call to a whole inner chunk and reads every slot of the cache (its capacity). A
one-token step needs neither:

* the online memory takes one step (``mem.state_pass`` with a chunk of one token; for deep memories the gradient
  stays at the inner chunk's reference weights, and the reference moves to the new weights exactly when this token
  completes an inner chunk -- the chunk-wise semantics of DESIGN.md section 2, token by token);
* the cached read touches only the filled slots: constant segmentation reads the first ``2^j`` slots, the smallest
  power-of-two bucket that holds every filled one (``lax.switch`` over the buckets, so a step costs the segments
  filled, not the capacity); ``ssc`` gathers its ``top_k`` slots per (batch, head) and reads only those; log
  segmentation has ``O(log N)`` slots and reads them all;
* the cached read loops over the bucket's slots of the batch-major cache ``[b, h, m, ...]`` and reads each in
  place once; a read linear in the memory (linear memories; soup's layers) mixes them first, ``q^T sum_i gamma_i S_i``.

The append stage (segment boundary, reset, log levels) and the combine stage are the streaming form's own
(:func:`mc_jax.ops.cache.append_step`, :func:`mc_jax.ops.stages.combine`), so a step equals
:func:`mc_jax.ops.cache.mc_stream` on the same token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mc_jax.ops import aggregation as agg
from mc_jax.ops.cache import Chunk, MCCache, append_step, masked_keys
from mc_jax.ops.memories import MemorySpec
from mc_jax.ops.stages import XLA_STAGES, Stages, combine, online_reader
from mc_jax.ops.utils import state_dtype, take_per_group
from mc_jax.typing import Array, Float, PyTree


def slot_buckets(capacity: int) -> tuple[int, ...]:
    """Read widths of the decode step: ``0, 1, 2, 4, ...`` up to ``capacity`` (the last one is ``capacity``)."""
    sizes, m = [0], 1
    while m < capacity:
        sizes.append(m)
        m *= 2
    return tuple(sizes) + (capacity,)


def read_slots(spec: MemorySpec, what: str, slots: PyTree, gamma: Float[Array, "b h m"],
               x: Float[Array, "b h i"]) -> Float[Array, "b h o"]:
    """``sum_{m < M} gamma[b, h, m] map_m(x[b, h])`` over the first ``M`` (gamma's width) memories of ``slots``
    (leaves ``[b, h, >= M, ...]``), one token.

    ``what``: ``read`` (the full read-out, for deep memories with its residual ``x * sum(gamma)``, as
    :func:`mc_jax.ops.reads.dense_mix`), or one deep layer ``W2`` / ``W1`` (soup). Maps linear in the memory (a
    linear read, one layer) mix the memories first, ``(sum_m gamma_m W_m) x``. A loop over the ``m`` slots (static
    trip count, so reverse-differentiable) reads each slot once in place; a batched matmul over a slice of the
    slots would first copy the slice.
    """
    width = gamma.shape[-1]
    slot = lambda i: jax.tree.map(lambda s: jax.lax.dynamic_index_in_dim(s, i, 2, keepdims=False), slots)
    matrix = not spec.family.deep  # linear-family memories (linear, swla) read a matrix: q^T S
    if matrix or what != "read":
        leaf = slots if matrix else slots[what]
        body = lambda i, acc: acc + gamma[:, :, i, None, None] * jax.lax.dynamic_index_in_dim(leaf, i, 2, False)
        mixed = jax.lax.fori_loop(0, width, body, jnp.zeros(leaf.shape[:2] + leaf.shape[3:], leaf.dtype))
        if matrix:
            return jnp.einsum("bhk,bhkv->bhv", x, mixed)
        return jnp.einsum("bhoi,bhi->bho", mixed, x)

    def body(i, acc):
        w = slot(i)
        hidden = jax.nn.gelu(jnp.einsum("bhfd,bhd->bhf", w["W2"], x))
        return acc + gamma[:, :, i, None] * jnp.einsum("bhdf,bhf->bhd", w["W1"], hidden)

    return jax.lax.fori_loop(0, width, body, jnp.zeros_like(x)) + x * jnp.sum(gamma, -1)[..., None]


def _gather_top_k(slots: PyTree, gamma: Float[Array, "b h m"], logits, available, top_k: int):
    """The ``top_k`` slots of every (batch, head) by logit, and their weights: ``(slots [b, h, k, ...], gamma)``."""
    masked = jnp.where(available, logits, -jnp.inf)
    _, idx = jax.lax.top_k(jax.lax.stop_gradient(masked), top_k)  # b h k: the slots agg.topk_mask keeps
    b, h, _ = logits.shape

    def take(s):  # whole slot rows of the cache as [b * h, M, ...] (contiguous, batch-major)
        rows = take_per_group(s.reshape(b * h, *s.shape[2:]), idx.reshape(b * h, top_k))
        return rows.reshape(b, h, top_k, *s.shape[3:])

    return jax.tree.map(take, slots), jnp.take_along_axis(gamma, idx, axis=-1)


def _cached_part(spec, aggregation, top_k, slots, slot_keys, slot_valid, width: int, u, online_logit, q):
    """``(gamma [b h m], gamma_on [b h], mix)`` over the first ``width`` slots (``slot_valid``: the readable ones)."""
    # slots are read in place: the loop of read_slots stops at ``width`` (a slice would be a copy)
    available = jnp.broadcast_to(slot_valid[:width], (q.shape[0], q.shape[2], width))
    content = agg.content_u(aggregation, u)
    logits = None if content is None else jnp.einsum("bhd,bhmd->bhm", content, slot_keys[:, :, :width])
    gamma, gamma_on = agg.weights(aggregation, logits, online_logit, available, top_k)
    if aggregation == "ssc" and top_k < width:
        slots, gamma_read = _gather_top_k(slots, gamma, logits, available, top_k)
    else:
        gamma_read = gamma
    mix = lambda what, x: read_slots(spec, what, slots, gamma_read, x[:, 0])[:, None]
    return gamma, gamma_on, mix


def mc_decode_step(q, k, v, u, gates, cache: MCCache, spec: MemorySpec, *, aggregation: str, segmentation: str,
                   segment_size: int, top_k: int | None, init: str, pool: str, chunk: int,
                   stages: Stages = XLA_STAGES):
    """One new token ``[b, 1, h, *]`` from ``cache``; returns ``(y [b, 1, h, dv], new cache)`` as :func:`mc_stream`."""
    del init  # the cache's
    b, t, h, _ = q.shape
    if t != 1:
        raise ValueError(f"mc_decode_step takes one token; got {t} (use the streaming form for blocks)")
    sd = state_dtype()
    q, k, v = (x.astype(sd) for x in (q, k, v))
    u = None if u is None else u.astype(sd)
    gates = {name: g.astype(sd) for name, g in gates.items()}
    # deep memories: the reference weights move to the new weights when this token ends an inner chunk
    # (linear-family state passes read ``valid`` as "a real token": swla's window skips padding)
    ends_chunk = jnp.broadcast_to((cache.position + 1) % chunk == 0, (b, 1, h))
    pass_valid = ends_chunk if spec.family.deep else jnp.ones((b, 1, h), bool)
    data, online = stages.state_pass(spec, k, v, gates, cache.online, 1, pass_valid)
    read_online, online_layer = online_reader(spec, data, 1, 1, (b, 1, h))
    y_online = read_online(q, k, gates)

    count = (cache.position % segment_size + 1).astype(sd)
    online_pooled = agg.pool_keys(cache.key_sums[0] + k[:, 0], count, pool)
    online_logit = agg.online_logit(aggregation, None if u is None else u[:, 0], online_pooled)

    # Append first, then read the appended cache with the old validity: a slot this token fills or clears is not
    # one it reads (or is unchanged), and reading the updated buffer lets XLA update the slots in place (reading the
    # old buffer inside the switch and then updating it made XLA copy the whole cache, every token).
    xs = Chunk(q, k, v, u, gates, jnp.ones((1,), bool))
    new = append_step(cache, xs, masked_keys(xs), online, spec, stages, pass_valid=pass_valid)

    def read(width: int):
        def branch(_):
            if width == 0:  # nothing cached yet: the online memory alone (gamma_on = 1 for every aggregation)
                return y_online
            gamma, gamma_on, mix = _cached_part(spec, aggregation, top_k, new.slots, new.slot_keys, cache.slot_valid,
                                                width,
                                                None if u is None else u[:, 0], online_logit, q)
            return combine(spec, aggregation, q, gamma[:, None], gamma_on[:, None], y_online, online_layer, mix)

        return branch

    if segmentation == "constant":
        widths = slot_buckets(cache.capacity)
        filled = jnp.sum(cache.slot_valid.astype(jnp.int32))
        index = jnp.sum((jnp.asarray(widths) < filled).astype(jnp.int32))
        y = jax.lax.switch(index, [read(w) for w in widths], None)
    else:
        y = read(cache.capacity)(None)

    return y, new


__all__ = ["mc_decode_step", "read_slots", "slot_buckets"]
