"""Reads of the cached memories that touch only what a token can see (whole-sequence form).

:func:`mc_jax.ops.reads.dense_mix` reads every cached state for every token and zeroes the invisible ones. The reads
here give the same result (a select drops what a token cannot see, so a non-finite invisible state never reaches it)
and skip the work at the granularity of a query block:

* :func:`causal_read` (constant segmentation) -- query block ``j`` reads only the states visible to its last token,
  ``n_j = (end_j - 1) // C``: only the (query block, state) pairs at or below the diagonal, about half of the dense
  read;
* :func:`sparse_read` (``ssc``) -- per query block of ``bq`` tokens, gather the at most ``bq * top_k`` states its
  tokens weight and read only those: ``T * bq * top_k`` state reads, whatever the number of segments ``N``;
* :func:`residual_prefix_read` (``residual`` over linear memories, constant segmentation) -- ``sum_{i < c} q^T S_i
  = q^T P_c`` with ``P`` the exclusive prefix sum of the stacked states: one read per token;
  :func:`residual_blocked_read` the same over log segmentation's per-level memories;
* :func:`weighted_read` -- the linear read ``y_c = sum_m gamma_cm S_m^T q_c`` with a hand-written VJP that reuses
  the gamma-weighted cotangent (two matmuls backward, where autodiff of a checkpointed read needs three).

Layouts as in :mod:`mc_jax.ops.reads`: a dense stack has leaves ``[b, n, h, ...]``, ``gamma`` / ``available`` are
``[b, t, h, n]`` over the padded sequence (token ``t`` sees segments ``i < t // C``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from mc_jax.ops.memories import MemorySpec
from mc_jax.ops.reads import dense_mix
from mc_jax.ops.segmentation import from_odd_runs
from mc_jax.ops.utils import prefix_sum
from mc_jax.typing import Array, Bool, Float, PyTree


# --- the linear read with its own VJP ---------------------------------------------------------------------------
def _stacked(states: Float[Array, "b h m k v"]) -> Float[Array, "b h mk v"]:
    """The stack as one ``[m k, v]`` matrix per head (a bitcast: memories and key width stay in this order, so
    XLA:CPU contracts them without first transposing the stack to ``[k, m]`` order)."""
    b, h, m, k, v = states.shape
    return states.reshape(b, h, m * k, v)


def _weighted_queries(q: Float[Array, "b h c k"], gamma: Float[Array, "b h c m"]) -> Float[Array, "b h c mk"]:
    """``gamma[c, m] q[c]`` laid out as ``[c, m k]`` (the left operand of :func:`_full_read` and of ``dS``)."""
    b, h, c, _ = q.shape
    return (gamma[..., None] * q[:, :, :, None, :]).reshape(b, h, c, -1)


def _full_read(q, gamma, states):
    """``sum_m gamma[c, m] S_m^T q[c]`` over states every row sees: ``(gamma q) [c, m k]`` against the stack as one
    ``[c, m k] x [m k, v]`` matmul (memories and key width contracted together; no ``[c, m, v]`` read-out)."""
    return jnp.einsum("bhcj,bhjv->bhcv", _weighted_queries(q, gamma), _stacked(states))


def _masked_read(q, gamma, states):
    """The same over states some rows may not see: a state with ``gamma = 0`` is dropped by a select."""
    read = jnp.einsum("bhck,bhmkv->bhcmv", q, states)
    return jnp.einsum("bhcmv,bhcm->bhcv", jnp.where((gamma != 0)[..., None], read, 0.0), gamma)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def weighted_read(q: Float[Array, "b h c k"], gamma: Float[Array, "b h c m"], states: Float[Array, "b h m k v"],
                  full: int = 0) -> Float[Array, "b h c v"]:
    """``y[c] = sum_m gamma[c, m] S_m^T q[c]``.

    The first ``full`` states are visible to every row (a query block's states before its first token's segment):
    they are read in one merged matmul (:func:`_full_read`), weight times state even where a softmax weight
    underflowed to zero, so a non-finite state a row sees makes that row NaN. The others may be invisible to some
    rows: a state with ``gamma = 0`` is dropped by a select, not multiplied by zero, so a non-finite state a row
    cannot see never reaches it (forward or backward). Reading the full states without the selects (a pass over the
    ``[c, m, v]`` read-out forward and the ``[c, m, k]`` cotangent backward) took linear grm's forward+backward at
    T=4096, C=64 from 556 to 487 ms on the 2-core CPU (docs/performance.md).
    """
    y = _full_read(q, gamma[..., :full], states[:, :, :full]) if full else 0.0
    if full < gamma.shape[-1]:
        y = y + _masked_read(q, gamma[..., full:], states[:, :, full:])
    return y


def _weighted_read_fwd(q, gamma, states, full=0):
    return weighted_read(q, gamma, states, full), (q, gamma, states)


def _read_cotangents(q, gamma, states, dy, masked: bool):
    """``(dq, dgamma, dstates)`` of :func:`weighted_read` over ``states``; ``masked``: drop ``gamma = 0``."""
    m, k = states.shape[2:4]
    a = jnp.einsum("bhcv,bhjv->bhcj", dy, _stacked(states)).reshape(*dy.shape[:3], m, k)  # A = S dy
    if masked:
        a = jnp.where((gamma != 0)[..., None], a, 0.0)
    dq = jnp.einsum("bhcm,bhcmk->bhck", gamma, a)
    dgamma = jnp.einsum("bhck,bhcmk->bhcm", q, a)
    dstates = jnp.einsum("bhcj,bhcv->bhjv", _weighted_queries(q, gamma), dy).reshape(states.shape)
    return dq, dgamma, dstates


def _weighted_read_bwd(full, res, dy):
    """``A = S dy`` ``[c, m, k]`` serves both ``dq = sum_m gamma A`` and ``dgamma = q . A``; ``dS = (gamma q)^T dy``.

    Past the ``full`` states ``dgamma`` is zeroed where ``gamma = 0`` (the select of the forward): such a weight is
    masked, or a softmax output that underflowed, and in both cases its gradient never reaches the logits.
    """
    q, gamma, states = res
    parts = [_read_cotangents(q, gamma[..., lo:hi], states[:, :, lo:hi], dy, masked)
             for lo, hi, masked in ((0, full, False), (full, gamma.shape[-1], True)) if hi > lo]
    dq = sum(p[0] for p in parts)
    return dq, jnp.concatenate([p[1] for p in parts], -1), jnp.concatenate([p[2] for p in parts], 2)


weighted_read.defvjp(_weighted_read_fwd, _weighted_read_bwd)


def _read_block(spec: MemorySpec, what: str, stack: PyTree, gamma, available, x, full: int = 0):
    """``sum_m gamma[t, m] map_m(x_t)`` for one query block: ``stack`` leaves ``[b, m, h, ...]``, ``x [b, c, h, i]``;
    the first ``full`` states are visible to every token of the block (:func:`weighted_read`)."""
    if not spec.family.deep:  # a matrix read (linear, swla)
        heads_first = lambda a: jnp.moveaxis(a, 2, 1)  # b c h ... -> b h c ...
        y = weighted_read(heads_first(x), heads_first(jnp.where(available, gamma, 0.0)), jnp.moveaxis(stack, 2, 1),
                          full)
        return jnp.moveaxis(y, 1, 2)
    return dense_mix(spec, what, stack, gamma, x, x.shape[1], available)


def causal_read(spec: MemorySpec, what: str, stack: PyTree, gamma: Float[Array, "b t h n"],
                available: Bool[Array, "b t h n"], x: Float[Array, "b t h i"], *, size: int,
                block: int) -> Float[Array, "b t h o"]:
    """``sum_i gamma[t, i] map_i(x_t)`` where query block ``[s, s + block)`` reads only the states ``i < (s + block -
    1) // size`` (``block`` a multiple of ``size`` dividing ``t``). Each block is checkpointed (one unrolled read per
    block: the caller bounds the number of blocks)."""
    t = x.shape[1]
    ys = []
    for start in range(0, t, block):
        stop = start + block
        n = max(1, (stop - 1) // size)  # the first segment sees nothing: one state, all masked
        cut = lambda a, start=start, stop=stop, n=n: a[:, start:stop, :, :n]
        states = jax.tree.map(lambda s, n=n: s[:, :n], stack)
        read = jax.checkpoint(partial(_read_block, spec, what, full=min(start // size, n)))
        ys.append(read(states, cut(gamma), cut(available), x[:, start:stop]))
    return jnp.concatenate(ys, axis=1)


def sparse_read(spec: MemorySpec, what: str, stack: PyTree, gamma: Float[Array, "b t h n"],
                available: Bool[Array, "b t h n"], x: Float[Array, "b t h i"], *, top_k: int,
                block: int) -> Float[Array, "b t h o"]:
    """ssc: per query block of ``block`` tokens, gather the ``min(N, block * top_k)`` states its tokens weight most
    and read only those.

    Every state some token of the block weights is gathered (each token keeps at most ``top_k``; ranked by the
    block's largest weight), so the read is exact; the routing indices carry no gradient.
    """
    b, t, h = x.shape[:3]
    n = gamma.shape[-1]
    nq, cap = t // block, min(n, block * top_k)
    stack_bh = jax.tree.map(lambda s: jnp.moveaxis(s, 1, 2), stack)  # b h n ...
    blocks = lambda a: jnp.moveaxis(a.reshape(b, nq, block, *a.shape[2:]), 1, 0)

    @jax.checkpoint
    def one(args):
        xb, gb, ab = args  # [b c h i], [b c h n], [b c h n]
        gb = jnp.where(ab, gb, 0.0)
        _, idx = jax.lax.top_k(jnp.abs(jax.lax.stop_gradient(gb)).max(1), cap)  # b h cap
        take = lambda s: jnp.take_along_axis(s, idx.reshape(idx.shape + (1,) * (s.ndim - 3)), axis=2)
        chosen = jax.tree.map(lambda s: jnp.moveaxis(take(s), 2, 1), stack_bh)  # b cap h ...
        pick = lambda a: jnp.take_along_axis(a, idx[:, None], axis=-1)  # b c h cap
        return _read_block(spec, what, chosen, pick(gb), pick(ab), xb)

    ys = jax.lax.map(one, (blocks(x), blocks(gamma), blocks(available)))
    return jnp.moveaxis(ys, 0, 1).reshape(b, t, h, ys.shape[-1])


def residual_prefix_read(stack: Float[Array, "b n h dk dv"], q: Float[Array, "b t h dk"],
                         size: int) -> Float[Array, "b t h dv"]:
    """Residual aggregation over linear memories: ``y_t = q_t^T sum_{i < t // size} S_i``, one read per token.

    The exclusive prefix sum ``P_c = sum_{i < c} S_i`` is an associative scan along the segment axis
    (:func:`~mc_jax.ops.utils.prefix_sum`). Element ``c`` combines only ``S_i``, ``i < c``: a non-finite later state
    never reaches it.
    """
    b, t, h, dk = q.shape
    n = t // size
    shifted = jnp.concatenate([jnp.zeros_like(stack[:, :1]), stack[:, : n - 1]], axis=1)  # S_{c-1}, zero at c = 0
    prefix = prefix_sum(shifted, axis=1)
    qb = q.reshape(b, n, size, h, dk)
    return jnp.einsum("bnchk,bnhkv->bnchv", qb, prefix).reshape(b, t, h, -1)


def residual_blocked_read(stacks: list[Float[Array, "b g h dk dv"]], q: Float[Array, "b t h dk"],
                          size: int) -> Float[Array, "b t h dv"]:
    """Residual over log segmentation's per-level stacks (:meth:`~mc_jax.ops.stages.Compressed.level_memories`) of
    linear memories: per block, the sum of the memories of its present levels (``[b nb h dk dv]``, one memory per
    block), then one read per token."""
    b, t, h, dk = q.shape
    nb = t // size
    levels = [present_per_block(s, 1 << p, nb) for p, s in enumerate(stacks) if s.shape[1]]  # b nb h dk dv each
    if not levels:  # a single block: nothing is read
        return jnp.zeros((b, t, h, stacks[0].shape[-1]), q.dtype)
    summed = sum(levels[1:], levels[0])
    return jnp.einsum("bnchk,bnhkv->bnchv", q.reshape(b, nb, size, h, dk), summed).reshape(b, t, h, -1)


def present_per_block(stack: Float[Array, "b g h dk dv"], span: int, n_blocks: int) -> Float[Array, "b nb h dk dv"]:
    """A level's memories (``span = 2^p`` blocks per group) on the blocks that read them (the odd halves of
    :func:`~mc_jax.ops.segmentation.odd_runs` over blocks), zeros elsewhere."""
    whole = n_blocks // (2 * span)  # whole odd halves; the stack holds one more memory for a cut last one
    spread = lambda s, width: jnp.broadcast_to(s[:, :, None], (*s.shape[:2], width, *s.shape[2:]))
    tail = n_blocks - (2 * whole + 1) * span
    return from_odd_runs(spread(stack[:, :whole], span) if whole else None,
                         spread(stack[:, whole:], tail) if tail > 0 else None, n_blocks)
