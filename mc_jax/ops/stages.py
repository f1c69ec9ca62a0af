"""The named stages of Memory Caching, shared by the whole-sequence form (:mod:`.sequence`) and the streaming form.

1. **compress** (per ``init``, :data:`COMPRESS`): run the base memory; the online memory's chunk data (for the online
   read) and the cached memories. ``independent``: every segment (constant) or every aligned group of ``2^p``
   blocks at every level (log) is its own run from the initial state, runs batched so a level costs one chunk-wise
   pass. ``checkpoint``: one continuous run; cached memories are its states at segment / group ends.
2. **cached keys and weights** (per ``segmentation``, :data:`CACHED`): the memories each token may read, arranged
   for the read layout, their pooled keys ``pool(K_i)``, availability and gate logits ``<u_t, pool(K_i)>``; the
   online memory's logit pools its keys up to ``t``. The aggregation turns logits into ``gamma``.
3. **read** (per layout): ``sum_i gamma_i map_i(x)``: ``dense`` (one stack shared by all tokens; constant) or
   ``blocked`` (log: one stack per level, each memory read only by the run of tokens where it is present).
   Implementations are swappable (:class:`Stages`); a linear memory's read may instead come from the tokens
   (``read_tokens``: the segment-gated quadratic form).
4. **combine** (:func:`combine`): ``y = gamma_on r_on + sum_i gamma_i r_i``, or soup's parameter mix.

The weights, read and combine stages run as one swappable stage, ``weights_read`` (:func:`xla_weights_read`: the
three in order), so that an implementation may fuse them (:func:`mc_jax.ops.reads_gated.gated_read`: the softmax
per query block, no ``[b, t, h, n]`` weights).

Shapes: ``b`` batch, ``t`` tokens (padded to ``length``), ``h`` heads, ``n`` segments / blocks, ``m`` cache slots.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from mc_jax.ops import aggregation as agg
from mc_jax.ops.memories import IDENTITY_GATES, MemorySpec
from mc_jax.ops.memories.linear import from_chunks, to_chunks
from mc_jax.ops.reads import blocked_mix, dense_mix
from mc_jax.ops.segmentation import even_groups, fenwick_slots, read_groups
from mc_jax.ops.utils import pad_axis
from mc_jax.typing import Array, Bool, Float, PyTree

# Soft budget of values alive per head in one dense read block (block tokens x cached memories x output width).
READ_BUDGET = 1 << 21


def xla_state_pass(spec: MemorySpec, k, v, gates, state, chunk: int, valid):
    """The chunk-wise XLA state pass of ``spec``'s family: ``(chunk_data, final)``."""
    return spec.family.state_pass(spec, k, v, gates, state, chunk, valid)


def xla_read_dense(spec: MemorySpec, what: str, stack: PyTree, gamma, available, x, *, block: int,
                   segment_size: int, aggregation: str, top_k: int | None):
    """Dense read in XLA (:func:`mc_jax.ops.reads.dense_mix`); the keyword context is for other implementations."""
    del segment_size, aggregation, top_k
    return dense_mix(spec, what, stack, gamma, x, block, available)


def xla_read_tokens(spec: MemorySpec, q, k, v, gates, init_state, gamma, *, segmentation: str, segment_size: int,
                    init: str, aggregation: str):
    """No token-form read in XLA's reference: ``None`` (the caller reads the cached states). Other implementations
    return the cached read ``sum_i gamma_i q^T S_i`` ``[b t h dv]`` computed from the tokens."""
    del spec, q, k, v, gates, init_state, gamma, segmentation, segment_size, init, aggregation
    return None


def xla_read_blocked(spec: MemorySpec, what: str, stacks: list, gamma, available, x, *, size: int, aggregation: str):
    """Per-level read in XLA (:func:`mc_jax.ops.reads.blocked_mix`: a level's memories are read only by the tokens
    where it is present, so ``available`` is structural); ``available``, ``aggregation`` are for other
    implementations."""
    del available, aggregation
    return blocked_mix(spec, what, stacks, gamma, x, size)


def xla_weights_read(spec: MemorySpec, cached: Cached, keys: Keys, u, q, y_online, online_layer, *, size: int,
                     aggregation: str, top_k: int | None, stages: Stages, read_tokens: Callable = lambda gamma: None):
    """Weights, read and combine in order: ``gamma [b t h m]`` from the cached logits, then the cached read (from
    the tokens when ``read_tokens(gamma)`` gives one, else ``stages``' read of the cached layout), then
    :func:`combine` (the whole-sequence output ``[b t h dv]``)."""
    gamma, gamma_on = agg.weights(aggregation, cached.logits, online_logit(aggregation, u, keys), cached.available,
                                  top_k)
    y_cached = read_tokens(gamma)
    if y_cached is None:
        mix = cached_reader(stages, spec, cached, gamma, size=size, aggregation=aggregation, top_k=top_k)
    else:  # only linear memories, whose combine reads once: mix("read", q)
        mix = lambda what, x: y_cached
    return combine(spec, aggregation, q, gamma, gamma_on, y_online, online_layer, mix)


class Stages(NamedTuple):
    """The implementation of every swappable stage (hashable: a static argument of the jitted forms).

    ``state_pass(spec, k, v, gates, state, chunk, valid) -> (chunk_data, final)`` (:func:`xla_state_pass`);
    ``read_dense(spec, what, stack, gamma, available, x, *, block, segment_size, aggregation, top_k)``;
    ``read_blocked(spec, what, stacks, gamma, available, x, *, size, aggregation)`` (``stacks``: per level, see
    :meth:`Compressed.level_memories`);
    ``read_tokens(spec, q, k, v, gates, init_state, gamma, *, segmentation, segment_size, init, aggregation)``: the
    cached read from the tokens instead of the states (a linear memory's quadratic form), or ``None`` to read the
    states (:func:`xla_read_tokens`);
    ``weights_read(spec, cached, keys, u, q, y_online, online_layer, *, size, aggregation, top_k, stages,
    read_tokens)`` (:func:`xla_weights_read`; whole-sequence form; ``read_tokens``: ``gamma -> y | None``, the
    ``read_tokens`` stage bound to this call's tokens). :mod:`mc_jax.dispatch` builds these per call.
    """

    state_pass: Callable = xla_state_pass
    read_dense: Callable = xla_read_dense
    read_blocked: Callable = xla_read_blocked
    read_tokens: Callable = xla_read_tokens
    weights_read: Callable = xla_weights_read


XLA_STAGES = Stages()


# --- layout helpers --------------------------------------------------------------------------------------------


def pad_inputs(q, k, v, u, gates, length: int):
    """Pad every per-token input to ``length`` with identity steps; returns ``(q, k, v, u, gates, valid [b t h])``."""
    t = q.shape[1]
    pad = lambda x, value=0.0: None if x is None else pad_axis(x, length, 1, value)
    gates = {name: pad(g, IDENTITY_GATES[name]) for name, g in gates.items()}
    valid = jnp.broadcast_to((jnp.arange(length) < t)[None, :, None], (q.shape[0], length, q.shape[2]))
    return pad(q), pad(k), pad(v), pad(u), gates, valid


def to_runs(x, run: int):
    """``[b, t, ...] -> [b * t / run, run, ...]``."""
    return x.reshape(x.shape[0] * (x.shape[1] // run), run, *x.shape[2:])


def broadcast_runs(state, runs_per_row: int):
    """Initial state ``[b, ...]`` for ``b * runs_per_row`` independent runs."""
    return jax.tree.map(lambda s: jnp.repeat(s, runs_per_row, axis=0), state)


# --- 1. compress -----------------------------------------------------------------------------------------------


class Compressed(NamedTuple):
    """Output of the compress stage.

    ``online``: chunk data of the online memory over runs of ``run`` tokens (``[b * length / run, ...]``);
    ``finals``: independent: the readable memory of every block (level 0, leaves ``[b, n, h, ...]``), then per
    level ``p > 0`` of the even groups ``2j`` some token reads (leaves ``[b, read_groups(n, p), h, ...]``);
    ``boundaries``: checkpoint: the readable state after every ``chunk`` tokens, leaves ``[b, length/chunk + 1, ...]``.
    """

    online: Any
    run: int
    finals: list | None
    boundaries: PyTree | None
    per_block: int  # inner chunks per block (checkpoint)

    def constant_memories(self) -> PyTree:
        """The memory of every segment, leaves ``[b, n, h, ...]``."""
        if self.finals is not None:
            return self.finals[0]
        return jax.tree.map(lambda s: s[:, self.per_block::self.per_block], self.boundaries)  # after segment i

    def level_memories(self, n_blocks: int, levels: int) -> list[PyTree]:
        """Per level ``p``: for every pair ``j`` of level-``p`` groups with a reader the memory its odd half reads
        (:func:`~mc_jax.ops.segmentation.odd_runs`), group ``2j`` (blocks ``[2j 2^p, (2j + 1) 2^p)``); leaves
        ``[b, read_groups(n_blocks, p), h, ...]``."""
        if self.finals is not None:  # the independent runs of the even groups that are read
            level0 = jax.tree.map(lambda s: s[:, 0:2 * read_groups(n_blocks, 0):2], self.finals[0])
            return [level0] + self.finals[1:levels]
        # the running state at block (2j + 1) 2^p
        step = lambda p: self.per_block << p
        return [jax.tree.map(lambda s, p=p: s[:, step(p):n_blocks * self.per_block:2 * step(p)], self.boundaries)
                for p in range(levels)]


def compress_independent(spec: MemorySpec, k, v, gates, valid, init_state, *, size: int, levels: int, chunk: int,
                         state_pass: Callable) -> Compressed:
    """Every group of ``size << p`` tokens (``p < levels``) is an independent run from ``init_state``: every block
    (level 0: the online memory's runs too), and at a level ``p > 0`` only the even groups some token reads (group
    ``2j + 1`` would be read by the blocks with ``c >> p = 2j + 2``, whose bit ``p`` is clear; a group that ends past
    the sequence has no reader), at most half a pass per level. ``k`` etc. are padded to whole blocks only."""
    b, n_blocks = k.shape[0], k.shape[1] // size
    level_finals, online = [], None
    for p in range(levels):
        run, groups = size << p, read_groups(n_blocks, p)
        runs = ((lambda x: to_runs(x, run)) if p == 0
                else (lambda x, run=run, groups=groups: to_runs(even_groups(x, run, groups), run)))
        init = broadcast_runs(init_state, runs(valid).shape[0] // b)
        data, finals = state_pass(spec, runs(k), runs(v), {name: runs(g) for name, g in gates.items()}, init, chunk,
                                  runs(valid))
        online = data if p == 0 else online
        finals = jax.tree.map(lambda s: s.reshape(b, -1, *s.shape[1:]), finals)
        level_finals.append(spec.family.readable(finals))
    return Compressed(online, size, level_finals, None, size // chunk)


def compress_checkpoint(spec: MemorySpec, k, v, gates, valid, init_state, *, size: int, levels: int, chunk: int,
                        state_pass: Callable) -> Compressed:
    """One continuous run; the cached memories are its readable states at chunk boundaries."""
    del levels
    data, final = state_pass(spec, k, v, gates, init_state, chunk, valid)
    starts = spec.family.chunk_start_states(data)
    boundaries = jax.tree.map(lambda s, f: jnp.concatenate([s, f[:, None]], axis=1), starts,
                              spec.family.readable(final))  # state after (j * chunk) tokens
    return Compressed(data, k.shape[1], None, boundaries, size // chunk)


COMPRESS = {"independent": compress_independent, "checkpoint": compress_checkpoint}


def online_reader(spec: MemorySpec, online, run: int, chunk: int, shape: tuple[int, int, int]):
    """``(read(q, k, gates) -> y_online [b t h dv], layer(name, x) -> [b t h o])`` of the online memory.

    ``online`` is its chunk data over runs of ``run`` tokens; ``shape = (b, t, h)`` of the inputs.
    """
    b, t, h = shape
    runs = lambda x: to_runs(x, run)

    def read(q, k, gates):
        y = spec.family.read_online(runs(q), runs(k), {n: runs(g) for n, g in gates.items()}, online, chunk)
        return y.reshape(b, t, h, -1)

    def layer(name: str, x):  # soup of a deep memory: one exact per-token layer
        return from_chunks(spec.family.online_layer(name, to_chunks(runs(x), chunk), online)).reshape(b, t, h, -1)

    return read, layer


# --- 2. cached keys and weights --------------------------------------------------------------------------------


class Keys(NamedTuple):
    """Pooled-key ingredients: per block ``sum`` ``[b n h dk]`` and ``count`` ``[n]``; ``online [b t h dk]``."""

    block_sum: Array
    block_count: Array
    online: Array


def pooled_keys(k: Float[Array, "b t h dk"], valid: Bool[Array, "b t h"], real: int, size: int, pool: str) -> Keys:
    """Key sums of every block of ``size`` tokens and the online memory's pooled keys up to each token.

    ``real``: tokens before the padding (the count of the last block).
    """
    b, length, h, dk = k.shape
    n_blocks = length // size
    sd = k.dtype
    keys = jnp.where(valid[..., None], k, 0.0).reshape(b, n_blocks, size, h, dk)
    block_count = jnp.clip(real - jnp.arange(n_blocks) * size, 0, size).astype(sd)
    in_block = keys.cumsum(2).reshape(b, length, h, dk)
    online = agg.pool_keys(in_block, (jnp.arange(length) % size + 1).astype(sd)[None, :, None, None], pool)
    return Keys(keys.sum(2), block_count, online)


class Cached(NamedTuple):
    """Output of the cached stage: ``memories`` in the read layout, ``available`` and ``logits`` ``[b t h m]``,
    ``pooled`` keys of the dense layout ``[b m h dk]`` (``None`` for blocked; a fused read forms its own logits)."""

    layout: str  # "dense": leaves [b m h ...] shared by all tokens; "blocked": per level [b g h ...] (log)
    memories: PyTree
    available: Array
    logits: Array | None
    pooled: Array | None = None


def cached_constant(comp: Compressed, keys: Keys, u, *, size: int, levels: int, pool: str) -> Cached:
    """Constant segments: token ``t`` reads every segment before its own (a dense stack)."""
    del levels
    b, length, h = keys.online.shape[:3]
    n_blocks = length // size
    pooled = agg.pool_keys(keys.block_sum, keys.block_count[None, :, None, None], pool)  # b n h dk
    block_of = jnp.arange(length) // size
    available = (jnp.arange(n_blocks)[None, :] < block_of[:, None])[None, :, None, :]  # 1 t 1 n
    available = jnp.broadcast_to(available, (b, length, h, n_blocks))
    logits = None if u is None else jnp.einsum("bthd,bnhd->bthn", u, pooled)
    return Cached("dense", comp.constant_memories(), available, logits, pooled)


def cached_log(comp: Compressed, keys: Keys, u, *, size: int, levels: int, pool: str) -> Cached:
    """Log (Fenwick) segments: slot ``p`` of a token in block ``c`` is its level-``p`` group (a stack per block)."""
    b, length, h = keys.online.shape[:3]
    n_blocks = length // size
    slots = fenwick_slots(n_blocks, levels)
    key_cumsum = jnp.concatenate([jnp.zeros_like(keys.block_sum[:, :1]), keys.block_sum.cumsum(1)], 1)
    count_cumsum = jnp.concatenate([jnp.zeros(1, keys.block_count.dtype), keys.block_count.cumsum()])
    group_sum = key_cumsum[:, slots.end] - key_cumsum[:, slots.start]  # b nb m h dk
    count = (count_cumsum[slots.end] - count_cumsum[slots.start])[None, :, :, None, None]
    pooled = agg.pool_keys(group_sum, count, pool)
    block_of = jnp.arange(length) // size
    available = jnp.broadcast_to(slots.present[block_of][None, :, None, :], (b, length, h, levels))
    logits = None
    if u is not None:  # per block, never a [b t h m dk] copy of the pooled keys for every token
        per_block = u.reshape(b, n_blocks, size, h, -1)  # <u_t, pool(K_i)> (agg.logits) of block n's slots m
        logits = jnp.einsum("bnchd,bnmhd->bnchm", per_block, pooled).reshape(b, length, h, levels)
    return Cached("blocked", comp.level_memories(n_blocks, levels), available, logits)


CACHED = {"constant": cached_constant, "log": cached_log}


def online_logit(aggregation: str, u, keys: Keys):
    """``<u_t, pool(K_on up to t)>`` ``[b t h]`` (``token``: ``u_t[0]``; ``None`` without gates)."""
    return agg.online_logit(aggregation, u, keys.online)


# --- 3. read ---------------------------------------------------------------------------------------------------


def dense_block(stack: PyTree, size: int, n_blocks: int) -> int:
    """Query block of the dense XLA read: whole segments, at most :data:`READ_BUDGET` values alive per head."""
    width = max(max(leaf.shape[-2:]) for leaf in jax.tree.leaves(stack))
    group_blocks = max(1, min(n_blocks, READ_BUDGET // max(1, size * n_blocks * width)))
    while n_blocks % group_blocks:
        group_blocks -= 1
    return size * group_blocks


def cached_reader(stages: Stages, spec: MemorySpec, cached: Cached, gamma, *, size: int, aggregation: str,
                  top_k: int | None):
    """``mix(what, x) = sum_i gamma_i map_i(x)`` over the cached memories, through the layout's read stage."""
    if cached.layout == "blocked":
        return lambda what, x: stages.read_blocked(spec, what, cached.memories, gamma, cached.available, x,
                                                   size=size, aggregation=aggregation)
    block = dense_block(cached.memories, size, gamma.shape[-1])
    return lambda what, x: stages.read_dense(spec, what, cached.memories, gamma, cached.available, x, block=block,
                                             segment_size=size, aggregation=aggregation, top_k=top_k)


# --- 4. combine ------------------------------------------------------------------------------------------------


def combine(spec: MemorySpec, aggregation: str, q, gamma, gamma_on, y_online, online_layer, mix):
    """``y = gamma_on r_on + sum_i gamma_i r_i``; soup over a deep memory mixes its layers instead (the family's).

    ``q [b t h dk]``, ``gamma [b t h m]``, ``gamma_on [b t h]``, ``y_online [b t h dv]``; ``online_layer`` and
    ``mix`` as in :meth:`~mc_jax.ops.memories.families.DeepFamily.soup`.
    """
    if aggregation == "soup" and spec.family.soup_layers:
        return spec.family.soup(q, gamma, gamma_on, online_layer, mix)
    return gamma_on[..., None] * y_online + mix("read", q)
