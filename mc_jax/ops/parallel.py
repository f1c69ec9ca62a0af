"""The parallel (training) form of Memory Caching: state passes, then one parallel read pass.

1. Compress. ``independent``: every segment (constant) or every aligned group of ``2^p`` blocks at every level
   (log) is an independent run of the base memory from the initial state; runs are batched, so a whole level costs
   one chunk-wise pass over the sequence. ``checkpoint``: one continuous run; cached memories are its states at
   segment / group ends (chunk boundaries, since the inner chunk divides the segment size).
2. Weights. Logits ``<u_t, pool(K_i)>`` of the available cached memories and of the online one (its keys pooled up
   to ``t``), turned into ``gamma`` by the aggregation (:mod:`mc_jax.ops.aggregation`).
3. Read. ``y_t = gamma_on r_on(t) + sum_i gamma_i M_i(q_t)``; the online read ``r_on`` comes from the chunk form.
   Soup mixes parameters instead: for a deep memory layer by layer, ``z = gamma_on W2(t) q + sum_i gamma_i W2_i q``,
   one ``gelu``, then the same for ``W1`` (linear memories: identical to grm).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mc_jax.ops import aggregation as agg
from mc_jax.ops import memories as mem
from mc_jax.ops.memories import IDENTITY_GATES, MemorySpec, deep
from mc_jax.ops.memories.linear import from_chunks, to_chunks
from mc_jax.ops.reads import blocked_mix, dense_mix
from mc_jax.ops.utils import ceil_div, num_levels, pad_axis, state_dtype

# Soft budget of values alive per head in one dense read block (block tokens x cached memories x output width).
_READ_BUDGET = 1 << 21


def pad_inputs(q, k, v, u, gates, length: int):
    """Pad every per-token input to ``length`` with identity steps; returns ``(q, k, v, u, gates, valid)``."""
    t = q.shape[1]
    pad = lambda x, value=0.0: None if x is None else pad_axis(x, length, 1, value)
    gates = {name: pad(g, IDENTITY_GATES[name]) for name, g in gates.items()}
    valid = jnp.broadcast_to((jnp.arange(length) < t)[None, :, None], (q.shape[0], length, q.shape[2]))
    return pad(q), pad(k), pad(v), pad(u), gates, valid


def _to_runs(x, run: int):
    """``[b, t, ...] -> [b * t / run, run, ...]``."""
    return x.reshape(x.shape[0] * (x.shape[1] // run), run, *x.shape[2:])


def _broadcast_runs(state, runs_per_row: int):
    """Initial state ``[b, ...]`` for ``b * runs_per_row`` independent runs."""
    return jax.tree.map(lambda s: jnp.repeat(s, runs_per_row, axis=0), state)


def _compress(spec, k, v, gates, valid, init_state, run: int, chunk: int, state_pass=mem.state_pass):
    """Independent runs of length ``run``; returns ``(chunk_data, finals [b * t / run, ...])``."""
    runs = lambda x: _to_runs(x, run)
    gates_r = {name: runs(g) for name, g in gates.items()}
    init = _broadcast_runs(init_state, k.shape[1] // run)
    return state_pass(spec, runs(k), runs(v), gates_r, init, chunk, runs(valid))


def _pallas_state_pass(spec, k, v, gates, state, chunk, valid):
    """``mem.state_pass`` for linear memories through the chunk-state kernel (same results and gradients)."""
    from mc_jax.kernels import chunk_state

    starts, u, final = chunk_state.state_pass(k, v, gates, state, chunk, valid)
    return (starts, u), final


def _chunk_boundary_states(spec: MemorySpec, chunk_data, final):
    """Readable states at every chunk boundary of one continuous run: ``[b, n_chunks + 1, ...]``."""
    starts = chunk_data[0] if spec.family == "linear" else chunk_data.weights
    return jax.tree.map(lambda s, f: jnp.concatenate([s, f[:, None]], axis=1), starts, mem.readable(spec, final))


def _pool(key_sum, count, pool: str):
    return key_sum / jnp.maximum(count, 1)[..., None] if pool == "mean" else key_sum


def mc_parallel(q, k, v, u, gates, init_state, spec: MemorySpec, *, aggregation: str, segmentation: str,
                segment_size: int, top_k: int | None, init: str, pool: str, chunk: int,
                kernels: frozenset[str] = frozenset()):
    """Memory Caching over a whole sequence from the initial state. Inputs validated, gates completed.

    ``kernels``: the Pallas kernels to use for linear memories (``chunk_state``, ``cache_read_dense``,
    ``cache_read_sparse``; see ``memory_caching.resolve_impl``); empty: all XLA. Deep memories always use XLA.
    """
    kernels = kernels if spec.family == "linear" else frozenset()
    state_pass = _pallas_state_pass if "chunk_state" in kernels else mem.state_pass
    b, t, h, dk = q.shape
    sd = state_dtype()
    size = segment_size
    n_blocks = ceil_div(t, size)
    levels = num_levels(n_blocks)
    span = size * (1 << (levels - 1)) if segmentation == "log" and init == "independent" else size
    length = ceil_div(t, span) * span  # every run of every level is whole
    q, k, v, u, gates, valid = pad_inputs(q, k, v, u, gates, length)
    q, k, v = (x.astype(sd) for x in (q, k, v))
    u = None if u is None else u.astype(sd)
    n_blocks = length // size
    block_of = jnp.arange(length) // size  # [t]

    # --- 1. compress: online chunk data (for the online read) and the cached memories --------------------------
    if init == "independent":
        online_data, block_finals = _compress(spec, k, v, gates, valid, init_state, size, chunk, state_pass)
        online_layout = size
        level_finals = [jax.tree.map(lambda s: s.reshape(b, n_blocks, *s.shape[1:]), block_finals)]
        if segmentation == "log":
            for p in range(1, levels):
                _, finals = _compress(spec, k, v, gates, valid, init_state, size << p, chunk, state_pass)
                level_finals.append(jax.tree.map(lambda s: s.reshape(b, -1, *s.shape[1:]), finals))
        level_finals = [mem.readable(spec, f) for f in level_finals]
    else:
        online_data, final = state_pass(spec, k, v, gates, init_state, chunk, valid)
        online_layout = length
        boundaries = _chunk_boundary_states(spec, online_data, final)  # state after (j * chunk) tokens
        per_block = size // chunk
    gates_online = {name: _to_runs(g, online_layout) for name, g in gates.items()}
    y_online = mem.read_online(spec, _to_runs(q, online_layout), _to_runs(k, online_layout), gates_online,
                               online_data, chunk)
    y_online = y_online.reshape(b, length, h, -1)

    # --- 2. pooled keys and aggregation weights ----------------------------------------------------------------
    kv_valid = valid[..., None].astype(sd)
    block_key_sum = (k * kv_valid).reshape(b, n_blocks, size, h, dk).sum(2)  # b nb h dk
    block_count = jnp.clip(t - jnp.arange(n_blocks) * size, 0, size).astype(sd)  # [nb]
    in_block = (k * kv_valid).reshape(b, n_blocks, size, h, dk).cumsum(2).reshape(b, length, h, dk)
    online_pooled = _pool(in_block, (jnp.arange(length) % size + 1).astype(sd)[None, :, None], pool)

    if segmentation == "constant":
        cached_keys = _pool(block_key_sum, block_count[None, :, None], pool)  # b n h dk
        available = (jnp.arange(n_blocks)[None, :] < block_of[:, None])[None, :, None, :]  # 1 t 1 n
        available = jnp.broadcast_to(available, (b, length, h, n_blocks))
        if init == "independent":
            stack = level_finals[0]
        else:
            stack = jax.tree.map(lambda s: s[:, per_block::per_block], boundaries)  # after segment i
        cached_logits = None if u is None else jnp.einsum("bthd,bnhd->bthn", u, cached_keys)
    else:
        # slot p of a token in block c: group (c >> p) - 1 of level p, present iff bit p of c is set
        blocks = jnp.arange(n_blocks)
        present = jnp.stack([(blocks >> p) & 1 for p in range(levels)], -1).astype(bool)  # nb m
        group = jnp.stack([jnp.maximum((blocks >> p) - 1, 0) for p in range(levels)], -1)  # nb m
        key_cumsum = jnp.concatenate([jnp.zeros_like(block_key_sum[:, :1]), block_key_sum.cumsum(1)], 1)
        count_cumsum = jnp.concatenate([jnp.zeros(1, sd), block_count.cumsum()])
        ends = (blocks[:, None] >> jnp.arange(levels)) << jnp.arange(levels)  # nb m: first block after group
        starts = jnp.maximum(ends - (1 << jnp.arange(levels)), 0)
        group_sum = key_cumsum[:, ends] - key_cumsum[:, starts]  # b nb m h dk
        cached_keys = _pool(group_sum, (count_cumsum[ends] - count_cumsum[starts])[None, :, :, None], pool)
        if init == "independent":
            stacks = [jax.tree.map(lambda s: s[:, group[:, p]], level_finals[p]) for p in range(levels)]
            stacks = jax.tree.map(lambda *s: jnp.stack(s, axis=2), *stacks)  # b nb m h ...
        else:
            stacks = jax.tree.map(lambda s: s[:, ends * per_block], boundaries)  # b nb m h ...
        available = jnp.broadcast_to(present[block_of][None, :, None, :], (b, length, h, levels))
        cached_logits = None
        if u is not None:
            keys_per_token = jnp.moveaxis(cached_keys, 3, 2)[:, block_of]  # b t h m dk
            cached_logits = agg.logits(u, keys_per_token)
    online_logit = None if u is None else jnp.einsum("bthd,bthd->bth", u, online_pooled)
    gamma, gamma_on = agg.weights(aggregation, cached_logits, online_logit, available, top_k)

    # --- 3. read ---------------------------------------------------------------------------------------------
    if segmentation == "constant":
        width = max(max(leaf.shape[-2:]) for leaf in jax.tree.leaves(stack))
        group_blocks = max(1, min(n_blocks, _READ_BUDGET // max(1, size * n_blocks * width)))
        while n_blocks % group_blocks:
            group_blocks -= 1
        mix = lambda what, x: dense_mix(spec, what, stack, gamma, x, size * group_blocks)
        if kernels & {"cache_read_dense", "cache_read_sparse"}:
            from mc_jax.kernels import cache_read
            from mc_jax.kernels._common import resolve_strategy

            # the query block divides the segment: one set of available slots per query block
            strategy = resolve_strategy("auto")
            bq = cache_read.api.default_block_q(size, strategy)
            # top-k read: a block of bq_s tokens uses at most bq_s * top_k states; the work is T * top_k reads
            # whatever bq_s, so small blocks (16 rows, the smallest matmul tile) make the sparse read apply widely.
            bq_s = cache_read.api.default_block_q(size, strategy, cap=16)
            if "cache_read_sparse" in kernels and aggregation == "ssc" and bq_s * top_k < n_blocks:
                idx = cache_read.slot_indices(gamma, bq_s, bq_s * top_k)
                mix = lambda what, x: cache_read.sparse_mix(stack, gamma, x, idx, block_q=bq_s)
            elif "cache_read_dense" in kernels:
                mix = lambda what, x: cache_read.dense_mix(spec, what, stack, gamma, x, size * group_blocks,
                                                           block_q=bq)
    else:
        mix = lambda what, x: blocked_mix(spec, what, stacks, gamma, x)

    if aggregation == "soup" and spec.family == "deep":
        runs = lambda x: to_chunks(_to_runs(x, online_layout), chunk)
        unruns = lambda x: from_chunks(x).reshape(b, length, h, -1)
        z_online = unruns(deep.apply_layer("W2", runs(q), online_data))
        hidden = jax.nn.gelu(gamma_on[..., None] * z_online + mix("W2", q))
        y = (q * (gamma_on + gamma.sum(-1))[..., None]
             + gamma_on[..., None] * unruns(deep.apply_layer("W1", runs(hidden), online_data))
             + mix("W1", hidden))
    else:
        y = gamma_on[..., None] * y_online + mix("read", q)
    return y[:, :t]
