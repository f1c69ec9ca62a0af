"""The streaming form of Memory Caching: a fixed-capacity cache pytree and a scan over segments.

A call processes any number of new tokens from a cache: the tokens are placed in a buffer of whole inner chunks
aligned to absolute chunk boundaries (the current position may be mid-chunk, also under ``jit``), positions outside
the new tokens are identity steps, and a ``lax.scan`` walks the chunks. Segment boundaries are chunk boundaries
(the chunk divides the segment size), so per chunk it runs the online memory, reads the cached memories, and when
the chunk completes a segment it appends the online memory to the cache and resets it (``independent``) or keeps
it (``checkpoint``). Decoding is the same call with one token and costs one inner chunk plus one read per cached
memory, whatever the segment size.

Log segmentation keeps one slot per level (slot ``p`` holds the group of ``2^p`` blocks present when bit ``p`` of
the block index is set) and, for ``independent`` memories, an in-progress memory per level that has compressed the
tokens since its group started. When block ``c`` completes, ``m = trailing_ones(c)`` groups merge: slot ``m``
receives the level-``m`` memory (it covered exactly the blocks of the new group), slots ``< m`` empty, and levels
``<= m`` restart. Each token updates ``O(log N)`` memories.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from mc_jax.ops import aggregation as agg
from mc_jax.ops import memories as mem
from mc_jax.ops.memories import IDENTITY_GATES, MemorySpec, deep
from mc_jax.ops.memories.linear import from_chunks, to_chunks
from mc_jax.ops.reads import dense_mix
from mc_jax.ops.utils import ceil_div, state_dtype
from mc_jax.typing import Array, Bool, Float, Int, PyTree


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class MCCache:
    """State of a Memory Caching layer between calls.

    Attributes:
        position: tokens consumed so far (int32 scalar; the same for every batch row).
        online: the online memory's full state, leaves ``[b, h, ...]``.
        initial: the initial state segments restart from, leaves ``[b, h, ...]``.
        slots: cached memories (readable part: linear state or MLP weights), leaves ``[m, b, h, ...]``.
        slot_keys: pooled keys of the cached memories ``[m, b, h, dk]``.
        slot_valid: which slots hold a memory ``[m]``.
        key_sums: key sums of the segment in progress at each level ``[levels, b, h, dk]`` (index 0: online).
        levels: log + independent only: in-progress memories of levels ``1..m-1``, leaves ``[m - 1, b, h, ...]``.
        config: static ``(memory, segmentation, segment_size, init, pool, chunk)`` the cache was built for.
    """

    position: Int[Array, ""]
    online: PyTree
    initial: PyTree
    slots: PyTree
    slot_keys: Float[Array, "m b h dk"]
    slot_valid: Bool[Array, " m"]
    key_sums: Float[Array, "l b h dk"]
    levels: PyTree | None
    config: tuple = dataclasses.field(metadata=dict(static=True))

    @property
    def capacity(self) -> int:
        """Number of cache slots."""
        return self.slot_valid.shape[0]

    @property
    def memory(self) -> str:
        return self.config[0]

    @property
    def segmentation(self) -> str:
        return self.config[1]

    @property
    def segment_size(self) -> int:
        return self.config[2]

    @property
    def chunk_size(self) -> int:
        return self.config[5]


def cache_slots(max_len: int, segmentation: str, segment_size: int) -> int:
    """Slots a cache needs to hold everything up to ``max_len`` tokens."""
    n = ceil_div(max_len, segment_size)
    return max(1, n) if segmentation == "constant" else max(1, n.bit_length())


def empty_cache(spec: MemorySpec, init_state: PyTree, *, max_len: int, segmentation: str, segment_size: int,
                init: str, pool: str, chunk: int) -> MCCache:
    """An empty cache for ``init_state`` (leaves ``[b, h, ...]``) with room for ``max_len`` tokens."""
    m = cache_slots(max_len, segmentation, segment_size)
    b, h, dk = jax.tree.leaves(init_state)[0].shape[:3]
    sd = state_dtype()
    readable = mem.readable(spec, init_state)
    levels = None
    if segmentation == "log" and init == "independent" and m > 1:
        levels = jax.tree.map(lambda s: jnp.broadcast_to(s, (m - 1,) + s.shape), init_state)
    return MCCache(
        position=jnp.zeros((), jnp.int32),
        online=init_state,
        initial=init_state,
        slots=jax.tree.map(lambda s: jnp.zeros((m,) + s.shape, s.dtype), readable),
        slot_keys=jnp.zeros((m, b, h, dk), sd),
        slot_valid=jnp.zeros((m,), bool),
        key_sums=jnp.zeros((m if segmentation == "log" else 1, b, h, dk), sd),
        levels=levels,
        config=(spec.name, segmentation, segment_size, init, pool, chunk),
    )


def _select(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _set_slot(tree, index, value, pred):
    """``tree[index] = value`` where ``pred`` (an out-of-range index is dropped: a full cache stops growing)."""
    return jax.tree.map(lambda s, x: s.at[index].set(jnp.where(pred, x, s[jnp.minimum(index, s.shape[0] - 1)]),
                                                      mode="drop"), tree, value)


def _place(x: Array, offset, length: int, value: float = 0.0) -> Array:
    """Put ``x [b, t, ...]`` at ``offset`` of a ``[b, length, ...]`` buffer filled with ``value``."""
    buf = jnp.full((x.shape[0], length) + x.shape[2:], value, x.dtype)
    return jax.lax.dynamic_update_slice_in_dim(buf, x, offset, axis=1)


def _pool(key_sum, count, pool: str):
    return key_sum / jnp.maximum(count, 1) if pool == "mean" else key_sum


def mc_stream(q, k, v, u, gates, cache: MCCache, spec: MemorySpec, *, aggregation: str, segmentation: str,
              segment_size: int, top_k: int | None, init: str, pool: str, chunk: int):
    """Process ``t`` new tokens from ``cache``; returns ``(y [b, t, h, dv], new cache)``."""
    b, t, h, dk = q.shape
    size = segment_size
    sd = state_dtype()
    offset = cache.position % chunk
    n_steps = ceil_div(chunk - 1 + t, chunk)
    length = n_steps * chunk
    place = lambda x, value=0.0: _place(x.astype(sd), offset, length, value)
    q_b, k_b, v_b = place(q), place(k), place(v)
    u_b = None if u is None else place(u)
    gates_b = {name: place(g, IDENTITY_GATES[name]) for name, g in gates.items()}
    real = (jnp.arange(length) >= offset) & (jnp.arange(length) < offset + t)
    split = lambda x: None if x is None else jnp.moveaxis(x.reshape(b, n_steps, chunk, *x.shape[2:]), 1, 0)

    def step(cache: MCCache, xs):
        qs, ks, vs, us, gs, valid = xs  # one inner chunk: [b, c, h, *], valid [c]
        valid_bh = jnp.broadcast_to(valid[None, :, None], (b, chunk, h))
        data, online = mem.state_pass(spec, ks, vs, gs, cache.online, chunk, valid_bh)
        y_online = mem.read_online(spec, qs, ks, gs, data, chunk)

        masked_keys = ks * valid[None, :, None, None]
        start = cache.position % size
        count = (start + jnp.cumsum(valid)).astype(sd)[None, :, None, None]
        online_pooled = _pool(cache.key_sums[0][:, None] + jnp.cumsum(masked_keys, axis=1), count, pool)
        online_logit = None if us is None else jnp.einsum("bchd,bchd->bch", us, online_pooled)
        cached_logits = None if us is None else jnp.einsum("bchd,mbhd->bchm", us, cache.slot_keys)
        available = jnp.broadcast_to(cache.slot_valid, (b, chunk, h, cache.capacity))
        gamma, gamma_on = agg.weights(aggregation, cached_logits, online_logit, available, top_k)
        slots = jax.tree.map(lambda s: jnp.moveaxis(s, 0, 1), cache.slots)  # b m h ...
        mix = lambda what, x: dense_mix(spec, what, slots, gamma, x, chunk)
        if aggregation == "soup" and spec.family == "deep":
            z_online = from_chunks(deep.apply_layer("W2", to_chunks(qs, chunk), data))
            hidden = jax.nn.gelu(gamma_on[..., None] * z_online + mix("W2", qs))
            y = (qs * (gamma_on + gamma.sum(-1))[..., None]
                 + gamma_on[..., None] * from_chunks(deep.apply_layer("W1", to_chunks(hidden, chunk), data))
                 + mix("W1", hidden))
        else:
            y = gamma_on[..., None] * y_online + mix("read", qs)

        # --- bookkeeping: position, key sums, in-progress levels, and the append at a completed segment ------
        position = cache.position + jnp.sum(valid).astype(jnp.int32)
        key_sums = cache.key_sums + masked_keys.sum(1)[None]
        levels = cache.levels
        if levels is not None:
            n_lv = jax.tree.leaves(levels)[0].shape[0]
            runs = lambda x: jnp.broadcast_to(x[None], (n_lv,) + x.shape).reshape(n_lv * b, *x.shape[1:])
            flat = jax.tree.map(lambda s: s.reshape(n_lv * b, *s.shape[2:]), levels)
            _, advanced = mem.state_pass(spec, runs(ks), runs(vs), {n: runs(g) for n, g in gs.items()}, flat,
                                         chunk, runs(valid_bh))
            levels = jax.tree.map(lambda s: s.reshape(n_lv, b, *s.shape[1:]), advanced)
        done = valid[-1] & (position % size == 0)  # this chunk ended with the segment's last token
        block = (position - 1) // size
        fresh = cache.initial if init == "independent" else online
        if segmentation == "constant":
            slot = block
            level_memory = online
            key_sums_done = jnp.zeros_like(key_sums)
        else:
            slot = jax.lax.population_count(block ^ (block + 1)) - 1  # trailing ones of the finished block
            if levels is None:
                level_memory = online
            else:
                stacked = jax.tree.map(lambda o, lv: jnp.concatenate([o[None], lv]), online, levels)
                level_memory = jax.tree.map(lambda s: s[jnp.minimum(slot, s.shape[0] - 1)], stacked)
            restart = jnp.arange(key_sums.shape[0]) <= slot
            key_sums_done = jnp.where(restart[:, None, None, None], 0.0, key_sums)
            if levels is not None:
                per_leaf = lambda lv: (done & restart[1:]).reshape((-1,) + (1,) * (lv.ndim - 1))  # leaves differ (swla)
                levels = jax.tree.map(lambda s, lv: jnp.where(per_leaf(lv), s[None], lv), cache.initial, levels)
        group_size = size if segmentation == "constant" else size << slot
        level_keys = key_sums[jnp.minimum(slot, key_sums.shape[0] - 1)] if segmentation == "log" else key_sums[0]
        slot_valid = cache.slot_valid
        if segmentation == "log":
            slot_valid = jnp.where(done & (jnp.arange(cache.capacity) < slot), False, slot_valid)
        new = MCCache(
            position=position,
            online=_select(done, fresh, online),
            initial=cache.initial,
            slots=_set_slot(cache.slots, slot, mem.readable(spec, level_memory), done),
            slot_keys=_set_slot(cache.slot_keys, slot, _pool(level_keys, group_size, pool), done),
            slot_valid=slot_valid.at[slot].set(done | slot_valid[jnp.minimum(slot, cache.capacity - 1)], mode="drop"),
            key_sums=jnp.where(done, key_sums_done, key_sums),
            levels=levels,
            config=cache.config,
        )
        return new, y

    xs = (split(q_b), split(k_b), split(v_b), split(u_b), {n: split(g) for n, g in gates_b.items()},
          real.reshape(n_steps, chunk))
    cache, ys = jax.lax.scan(step, cache, xs)
    ys = jnp.moveaxis(ys, 0, 1).reshape(b, length, h, -1)
    return jax.lax.dynamic_slice_in_dim(ys, offset, t, axis=1), cache
