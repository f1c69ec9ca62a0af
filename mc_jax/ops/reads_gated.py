"""The fused weights + read of gated aggregations (grm; soup over matrix memories), constant segmentation.

Token ``t`` (segment ``c(t) = t // C``) reads the online memory and the cached states ``S_i``, ``i < c(t)``:

    l_i = <u_t, P_i>  (P_i = pool(K_i)),   l_on given,   lse_t = log(e^{l_on} + sum_{i < c(t)} e^{l_i})
    g_i = e^{l_i - lse_t},   g_on = e^{l_on - lse_t},   y_t = g_on y_on + sum_{i < c(t)} g_i S_i^T q_t.

:func:`gated_read` computes this per query block (only the states visible to the block's last token, as
:func:`~mc_jax.ops.reads_causal.causal_read`) and never forms the ``[b, t, h, n]`` logits or weights of the whole
sequence: a block's logits, mask, softmax and read live only inside the block. It keeps the per-token ``lse`` (as
flash attention does) and its hand-written VJP recomputes a block's weights from it. With ``dg_i = dy . S_i^T q``,
``dg_on = dy . y_on`` and ``D = sum_i g_i dg_i + g_on dg_on = dy . y`` (so the read-outs need not be recomputed):

    dl_i = g_i (dg_i - D),   dl_on = g_on (dg_on - D),   du = sum_i dl_i P_i,   dP_i = sum_t dl_ti u_t,
    dy_on = g_on dy,   and dq, dS, dg_i from ``A = S dy`` (:func:`~mc_jax.ops.reads_causal.weighted_read`'s VJP).

Forward: one ``[c, k] x [k, n v]`` read per block; backward: ``A = S dy`` and ``dS = (g q)^T dy``, two matmuls of
that size, where autodiff through the checkpointed unfused read needs three plus the weights pass. A state a token
cannot see is dropped by a select (its weight is exactly zero), never multiplied.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from mc_jax.ops.reads_causal import _weighted_read_bwd, weighted_read
from mc_jax.typing import Array, Float


def _visible(start: int, stop: int, size: int, n: int) -> np.ndarray:
    """``[c, n]``: token ``start + r`` sees state ``i`` iff ``i < (start + r) // size`` (static)."""
    return np.arange(n)[None, :] < (np.arange(start, stop) // size)[:, None]


def _block_logits(u: Float[Array, "b h c k"], pooled: Float[Array, "b h n k"], visible: np.ndarray):
    """Masked logits ``<u_t, P_i>`` ``[b h c n]`` (``-inf`` where the token cannot see the state)."""
    return jnp.where(visible, jnp.einsum("bhck,bhnk->bhcn", u, pooled), -jnp.inf)


def _block_forward(q, u, l_on, y_on, pooled, states, visible, full):
    """``(y [b h c v], lse [b h c])`` of one query block."""
    logits = _block_logits(u, pooled, visible)
    top = jnp.maximum(l_on, logits.max(-1))
    e, e_on = jnp.exp(logits - top[..., None]), jnp.exp(l_on - top)
    z = e_on + e.sum(-1)
    y = (e_on / z)[..., None] * y_on + weighted_read(q, e / z[..., None], states, full)
    return y, top + jnp.log(z)


def _block_backward(q, u, l_on, y_on, pooled, states, visible, full, y, lse, dy):
    """``(dq, du, dl_on, dy_on, dpooled, dstates)`` of one query block from its saved ``y`` and ``lse``."""
    g = jnp.exp(_block_logits(u, pooled, visible) - lse[..., None])  # exactly 0 where invisible
    g_on = jnp.exp(l_on - lse)
    dq, dg, dstates = _weighted_read_bwd(full, (q, g, states), dy)
    d = jnp.sum(y * dy, -1)
    dl = g * (dg - d[..., None])
    dl_on = g_on * (jnp.sum(y_on * dy, -1) - d)
    du = jnp.einsum("bhcn,bhnk->bhck", dl, pooled)
    dpooled = jnp.einsum("bhcn,bhck->bhnk", dl, u)
    return dq, du, dl_on, g_on[..., None] * dy, dpooled, dstates


def _blocks(t: int, size: int, block: int):
    """``(start, stop, n, full)`` per query block: ``n`` states visible to its last token, the first ``full`` of them
    visible to every token of it (read without selects, :func:`~mc_jax.ops.reads_causal.weighted_read`)."""
    return [(s, s + block, (s + block - 1) // size, s // size) for s in range(0, t, block)]


def _forward(q, u, l_on, y_on, pooled, states, size, block):
    ys, lses = [], []
    for start, stop, n, full in _blocks(q.shape[2], size, block):
        cut = lambda a, start=start, stop=stop: a[:, :, start:stop]
        if n == 0:  # nothing cached is visible: the online memory alone
            ys.append(cut(y_on))
            lses.append(cut(l_on))
            continue
        y, lse = _block_forward(cut(q), cut(u), cut(l_on), cut(y_on), pooled[:, :, :n], states[:, :, :n],
                                _visible(start, stop, size, n), full)
        ys.append(y)
        lses.append(lse)
    return jnp.concatenate(ys, axis=2), jnp.concatenate(lses, axis=2)


@partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _gated_read_heads(q, u, l_on, y_on, pooled, states, size: int, block: int):
    """:func:`gated_read` on the heads-first layout: ``q, u [b h t k]``, ``l_on [b h t]``, ``y_on [b h t v]``,
    ``pooled [b h n k]``, ``states [b h n k v]``."""
    return _forward(q, u, l_on, y_on, pooled, states, size, block)[0]


def _gated_read_fwd(q, u, l_on, y_on, pooled, states, size, block):
    y, lse = _forward(q, u, l_on, y_on, pooled, states, size, block)
    return y, (q, u, l_on, y_on, pooled, states, y, lse)


def _gated_read_bwd(size, block, res, dy):
    q, u, l_on, y_on, pooled, states, y, lse = res
    grads = [[] for _ in range(4)]  # dq, du, dl_on, dy_on per block
    dpooled, dstates = jnp.zeros_like(pooled), jnp.zeros_like(states)
    for start, stop, n, full in _blocks(q.shape[2], size, block):
        cut = lambda a, start=start, stop=stop: a[:, :, start:stop]
        if n == 0:
            parts = (jnp.zeros_like(cut(q)), jnp.zeros_like(cut(u)), jnp.zeros_like(cut(l_on)), cut(dy))
        else:
            *parts, dp, ds = _block_backward(cut(q), cut(u), cut(l_on), cut(y_on), pooled[:, :, :n], states[:, :, :n],
                                             _visible(start, stop, size, n), full, cut(y), cut(lse), cut(dy))
            dpooled, dstates = dpooled.at[:, :, :n].add(dp), dstates.at[:, :, :n].add(ds)
        for acc, part in zip(grads, parts):
            acc.append(part)
    dq, du, dl_on, dy_on = (jnp.concatenate(g, axis=2) for g in grads)
    return dq, du, dl_on, dy_on, dpooled, dstates


_gated_read_heads.defvjp(_gated_read_fwd, _gated_read_bwd)


def gated_read(q: Float[Array, "b t h dk"], u: Float[Array, "b t h dk"], online_logit: Float[Array, "b t h"],
               y_online: Float[Array, "b t h dv"], pooled: Float[Array, "b n h dk"],
               states: Float[Array, "b n h dk dv"], *, size: int, block: int) -> Float[Array, "b t h dv"]:
    """``y_t = g_on y_on + sum_{i < t // size} g_i S_i^T q_t``, the softmax over ``<u_t, pooled_i>`` and the online
    logit fused into the read (module docstring). ``block``: query rows per block, a multiple of ``size`` dividing
    ``t``."""
    heads = lambda a: jnp.moveaxis(a, 2, 1)
    y = _gated_read_heads(heads(q), heads(u), heads(online_logit), heads(y_online), heads(pooled), heads(states),
                          size, block)
    return jnp.moveaxis(y, 1, 2)
