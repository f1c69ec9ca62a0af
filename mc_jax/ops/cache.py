"""The streaming form of Memory Caching: a fixed-capacity cache pytree and a scan over segments.

A call processes any number of new tokens from a cache: the tokens are placed in a buffer of whole inner chunks
aligned to absolute chunk boundaries (the current position may be mid-chunk, also under ``jit``), positions outside
the new tokens are identity steps, and a ``lax.scan`` walks the chunks. Segment boundaries are chunk boundaries
(the chunk divides the segment size), so a scan step is two stages: :func:`read_step` runs the online memory and
reads the cached memories (the stages of :mod:`mc_jax.ops.stages`), and :func:`append_step`, when the chunk
completes a segment, appends the online memory to the cache and resets it (``independent``) or keeps it
(``checkpoint``). Decoding is the same call with one token and costs one inner chunk plus one read per cached
memory, whatever the segment size.

Log segmentation keeps one slot per level (slot ``p`` holds the group of ``2^p`` blocks present when bit ``p`` of
the block index is set) and, for ``independent`` memories, an in-progress memory per level that has compressed the
tokens since its group started. When block ``c`` completes, ``m = trailing_ones(c)`` groups merge
(:func:`~mc_jax.ops.segmentation.fenwick_merge_level`): slot ``m``
receives the level-``m`` memory (it covered exactly the blocks of the new group), slots ``< m`` empty, and levels
``<= m`` restart. Each token updates ``O(log N)`` memories.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mc_jax.ops import aggregation as agg
from mc_jax.ops.memories import IDENTITY_GATES, MemorySpec
from mc_jax.ops.segmentation import cache_slots, fenwick_merge_level
from mc_jax.ops.stages import XLA_STAGES, Stages, combine, online_reader
from mc_jax.ops.utils import ceil_div, state_dtype
from mc_jax.typing import Array, Bool, Float, Int, PyTree


class CacheConfig(NamedTuple):
    """The static settings a cache was built for; a continuing call must use the same."""

    memory: str
    segmentation: str
    segment_size: int
    init: str
    pool: str
    chunk: int


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class MCCache:
    """State of a Memory Caching layer between calls.

    Attributes:
        position: tokens consumed so far (int32 scalar; the same for every batch row).
        online: the online memory's full state, leaves ``[b, h, ...]``.
        initial: the initial state segments restart from, leaves ``[b, h, ...]``.
        slots: cached memories (readable part: linear state or MLP weights), leaves ``[b, h, m, ...]``
            (batch-major: a one-token read is then a batched matmul over ``(b, h)``, no transposed copy).
        slot_keys: pooled keys of the cached memories ``[b, h, m, dk]``.
        slot_valid: which slots hold a memory ``[m]``.
        key_sums: key sums of the segment in progress at each level ``[levels, b, h, dk]`` (index 0: online).
        levels: log + independent only: in-progress memories of levels ``1..m-1``, leaves ``[m - 1, b, h, ...]``.
        config: the static :class:`CacheConfig` the cache was built for.
    """

    position: Int[Array, ""]
    online: PyTree
    initial: PyTree
    slots: PyTree
    slot_keys: Float[Array, "b h m dk"]
    slot_valid: Bool[Array, " m"]
    key_sums: Float[Array, "l b h dk"]
    levels: PyTree | None
    config: CacheConfig = field(metadata=dict(static=True))

    @property
    def capacity(self) -> int:
        """Number of cache slots."""
        return self.slot_valid.shape[0]


def empty_cache(spec: MemorySpec, init_state: PyTree, *, max_len: int, segmentation: str, segment_size: int,
                init: str, pool: str, chunk: int) -> MCCache:
    """An empty cache for ``init_state`` (leaves ``[b, h, ...]``) with room for ``max_len`` tokens."""
    m = cache_slots(max_len, segmentation, segment_size)
    b, h, dk = jax.tree.leaves(init_state)[0].shape[:3]
    sd = state_dtype()
    readable = spec.family.readable(init_state)
    levels = None
    if segmentation == "log" and init == "independent" and m > 1:
        levels = jax.tree.map(lambda s: jnp.broadcast_to(s, (m - 1,) + s.shape), init_state)
    return MCCache(
        position=jnp.zeros((), jnp.int32),
        online=init_state,
        initial=init_state,
        slots=jax.tree.map(lambda s: jnp.zeros(s.shape[:2] + (m,) + s.shape[2:], s.dtype), readable),
        slot_keys=jnp.zeros((b, h, m, dk), sd),
        slot_valid=jnp.zeros((m,), bool),
        key_sums=jnp.zeros((m if segmentation == "log" else 1, b, h, dk), sd),
        levels=levels,
        config=CacheConfig(spec.name, segmentation, segment_size, init, pool, chunk),
    )


def _select(pred, a, b):
    """``where(pred, a, b)`` leaf by leaf over two pytrees of the same structure."""
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _set_slot(tree, index, value, pred):
    """``tree[:, :, index] = value`` where ``pred`` (slot axis 2; an out-of-range index is dropped: a full cache
    stops growing)."""
    def put(s, x):
        old = s[:, :, jnp.minimum(index, s.shape[2] - 1)]
        return s.at[:, :, index].set(jnp.where(pred, x, old), mode="drop")

    return jax.tree.map(put, tree, value)


def _place(x: Array, offset, length: int, value: float = 0.0) -> Array:
    """Put ``x [b, t, ...]`` at ``offset`` of a ``[b, length, ...]`` buffer filled with ``value``."""
    buf = jnp.full((x.shape[0], length) + x.shape[2:], value, x.dtype)
    return jax.lax.dynamic_update_slice_in_dim(buf, x, offset, axis=1)


class Chunk(NamedTuple):
    """One inner chunk of the scan: ``q, k [b c h dk]``, ``v [b c h dv]``, ``u`` or None, gates ``[b c h]``,
    ``valid [c]`` (the new tokens)."""

    q: Array
    k: Array
    v: Array
    u: Array | None
    gates: dict
    valid: Array


def masked_keys(xs: Chunk) -> Array:
    """The chunk's keys with zeros outside the new tokens, ``[b c h dk]`` (shared by read and append)."""
    return jnp.where(xs.valid[None, :, None, None], xs.k, 0.0)


def read_step(cache: MCCache, xs: Chunk, spec: MemorySpec, stages: Stages, *, aggregation: str,
              top_k: int | None):
    """The read stage of one chunk: ``(y [b c h dv], chunk-end online state, masked keys [b c h dk])``.

    The cache is not changed; the masked keys (:func:`masked_keys`) are shared with :func:`append_step`.
    """
    b, chunk, h = xs.q.shape[:3]
    size, pool = cache.config.segment_size, cache.config.pool
    valid_bh = jnp.broadcast_to(xs.valid[None, :, None], (b, chunk, h))
    data, online = stages.state_pass(spec, xs.k, xs.v, xs.gates, cache.online, chunk, valid_bh)
    read_online, online_layer = online_reader(spec, data, chunk, chunk, (b, chunk, h))
    y_online = read_online(xs.q, xs.k, xs.gates)

    keys = masked_keys(xs)
    count = (cache.position % size + jnp.cumsum(xs.valid)).astype(keys.dtype)[None, :, None, None]
    online_pooled = agg.pool_keys(cache.key_sums[0][:, None] + jnp.cumsum(keys, axis=1), count, pool)
    us = xs.u
    online_logit = agg.online_logit(aggregation, us, online_pooled)
    content = agg.content_u(aggregation, us)
    cached_logits = None if content is None else jnp.einsum("bchd,bhmd->bchm", content, cache.slot_keys)
    available = jnp.broadcast_to(cache.slot_valid, (b, chunk, h, cache.capacity))
    gamma, gamma_on = agg.weights(aggregation, cached_logits, online_logit, available, top_k)
    slots = jax.tree.map(lambda s: jnp.moveaxis(s, 2, 1), cache.slots)  # b m h ...
    mix = lambda what, x: stages.read_dense(spec, what, slots, gamma, available, x, block=chunk, segment_size=size,
                                            aggregation=aggregation, top_k=top_k)
    return combine(spec, aggregation, xs.q, gamma, gamma_on, y_online, online_layer, mix), online, keys


def _advance_levels(levels: PyTree, xs: Chunk, spec: MemorySpec, stages: Stages, pass_valid=None) -> PyTree:
    """Log + independent: run the in-progress memories of levels ``1..m-1`` (leaves ``[m-1, b, h, ...]``) over the
    chunk, batched as ``(m - 1) * b`` runs. ``pass_valid [b c h]``: the state pass's ``valid`` when it is not the
    chunk's (the one-token decode step: whether the token ends an inner chunk)."""
    b, chunk, h = xs.q.shape[:3]
    n_lv = jax.tree.leaves(levels)[0].shape[0]
    runs = lambda x: jnp.broadcast_to(x[None], (n_lv,) + x.shape).reshape(n_lv * b, *x.shape[1:])
    flat = jax.tree.map(lambda s: s.reshape(n_lv * b, *s.shape[2:]), levels)
    valid_bh = jnp.broadcast_to(xs.valid[None, :, None], (b, chunk, h)) if pass_valid is None else pass_valid
    _, advanced = stages.state_pass(spec, runs(xs.k), runs(xs.v), {n: runs(g) for n, g in xs.gates.items()}, flat,
                                    chunk, runs(valid_bh))
    return jax.tree.map(lambda s: s.reshape(n_lv, b, *s.shape[1:]), advanced)


class _Merge(NamedTuple):
    """What a completed block writes: cache ``slot``, the ``memory`` and key sum it receives, the key sums and
    in-progress levels after the restart, ``slot_valid`` with merged slots cleared, and the group's token count."""

    slot: Array
    memory: PyTree
    keys: Array
    key_sums: Array
    levels: PyTree | None
    slot_valid: Array
    group_size: Array | int


def _merge_constant(cache: MCCache, block, online, key_sums, levels, done) -> _Merge:
    """Constant segments: block ``c`` goes to slot ``c``; the key sum restarts."""
    return _Merge(block, online, key_sums[0], jnp.zeros_like(key_sums), levels, cache.slot_valid,
                  cache.config.segment_size)


def _merge_log(cache: MCCache, block, online, key_sums, levels, done) -> _Merge:
    """Log segments: the ``m = trailing_ones(c)`` youngest groups merge into slot ``m``; levels ``<= m`` restart."""
    slot = fenwick_merge_level(block)
    if levels is None:
        memory = online
    else:
        stacked = jax.tree.map(lambda o, lv: jnp.concatenate([o[None], lv]), online, levels)
        memory = jax.tree.map(lambda s: s[jnp.minimum(slot, s.shape[0] - 1)], stacked)
    restart = jnp.arange(key_sums.shape[0]) <= slot
    key_sums_done = jnp.where(restart[:, None, None, None], 0.0, key_sums)
    if levels is not None:
        per_leaf = lambda lv: (done & restart[1:]).reshape((-1,) + (1,) * (lv.ndim - 1))  # leaves differ (swla)
        levels = jax.tree.map(lambda s, lv: jnp.where(per_leaf(lv), s[None], lv), cache.initial, levels)
    slot_valid = jnp.where(done & (jnp.arange(cache.capacity) < slot), False, cache.slot_valid)
    return _Merge(slot, memory, key_sums[jnp.minimum(slot, key_sums.shape[0] - 1)], key_sums_done, levels,
                  slot_valid, cache.config.segment_size << slot)


_MERGE = {"constant": _merge_constant, "log": _merge_log}


def append_step(cache: MCCache, xs: Chunk, keys: Array, online: PyTree, spec: MemorySpec, stages: Stages,
                pass_valid=None) -> MCCache:
    """The append stage of one chunk: position and key sums advance; a completed segment enters the cache.

    ``keys``: the chunk's masked keys (:func:`masked_keys`, shared with :func:`read_step`). ``pass_valid``: the level
    memories' state-pass ``valid`` when it differs from the chunk's (see :func:`_advance_levels`)."""
    config = cache.config
    position = cache.position + jnp.sum(xs.valid).astype(jnp.int32)
    key_sums = cache.key_sums + keys.sum(1)[None]
    levels = cache.levels if cache.levels is None else _advance_levels(cache.levels, xs, spec, stages, pass_valid)
    done = xs.valid[-1] & (position % config.segment_size == 0)  # this chunk ended with the segment's last token
    block = (position - 1) // config.segment_size
    merge = _MERGE[config.segmentation](cache, block, online, key_sums, levels, done)
    fresh = cache.initial if config.init == "independent" else online
    slot, slot_valid = merge.slot, merge.slot_valid
    return MCCache(
        position=position,
        online=_select(done, fresh, online),
        initial=cache.initial,
        slots=_set_slot(cache.slots, slot, spec.family.readable(merge.memory), done),
        slot_keys=_set_slot(cache.slot_keys, slot, agg.pool_keys(merge.keys, merge.group_size, config.pool), done),
        slot_valid=slot_valid.at[slot].set(done | slot_valid[jnp.minimum(slot, cache.capacity - 1)], mode="drop"),
        key_sums=jnp.where(done, merge.key_sums, key_sums),
        levels=merge.levels,
        config=config,
    )


def mc_stream(q, k, v, u, gates, cache: MCCache, spec: MemorySpec, *, aggregation: str, segmentation: str,
              segment_size: int, top_k: int | None, init: str, pool: str, chunk: int, stages: Stages = XLA_STAGES):
    """Process ``t`` new tokens from ``cache``; returns ``(y [b, t, h, dv], new cache)``.

    ``q, k [b t h dk]``, ``v [b t h dv]``, ``u`` or None, gates ``[b t h]``; the settings are ``cache.config``'s.
    """
    del segmentation, segment_size, init, pool  # the cache's (checked by the caller)
    b, t, h, _ = q.shape
    sd = state_dtype()
    offset = cache.position % chunk
    n_steps = ceil_div(chunk - 1 + t, chunk)
    length = n_steps * chunk
    place = lambda x, value=0.0: _place(x.astype(sd), offset, length, value)
    split = lambda x: None if x is None else jnp.moveaxis(x.reshape(b, n_steps, chunk, *x.shape[2:]), 1, 0)
    real = (jnp.arange(length) >= offset) & (jnp.arange(length) < offset + t)
    xs = Chunk(split(place(q)), split(place(k)), split(place(v)), None if u is None else split(place(u)),
               {n: split(place(g, IDENTITY_GATES[n])) for n, g in gates.items()}, real.reshape(n_steps, chunk))

    def step(cache: MCCache, xs: Chunk):
        y, online, keys = read_step(cache, xs, spec, stages, aggregation=aggregation, top_k=top_k)
        return append_step(cache, xs, keys, online, spec, stages), y

    cache, ys = jax.lax.scan(step, cache, xs)
    ys = jnp.moveaxis(ys, 0, 1).reshape(b, length, h, -1)
    return jax.lax.dynamic_slice_in_dim(ys, offset, t, axis=1), cache
