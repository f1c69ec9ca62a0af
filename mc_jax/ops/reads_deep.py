"""The cached read of deep (MLP) memories as wide matmuls, with a hand-written VJP (whole-sequence form).

A deep memory maps ``M_i(x) = x + W1_i gelu(W2_i x)``; the gamma-weighted read of a query block over ``m`` cached
memories is

    y_c = x_c sum_i gamma_ci + sum_i W1_i (gamma_ci gelu(W2_i x_c))
        = x_c sum_i gamma_ci + [gamma (.) gelu(x W2^T)]_{c, (i f)} W1^T_{(i f), d},

i.e. one ``[c, d] x [d, m f]`` matmul, an elementwise gelu, and one ``[c, m f] x [m f, d]`` matmul whose contraction
runs over the memories and the hidden width together: no ``[c, m, d]`` per-memory read-out and no batched
``m``-by-``m`` matmuls (:func:`mc_jax.ops.reads.dense_mix` computes ``W1_i h_i`` per memory, then sums). Backward
(:func:`_mix_bwd`), with ``A = dy W1`` (``[c, m f]``) serving both ``dgamma = sum_f h A + x . dy`` and
``dh = gamma A``: five matmuls of the same widths (``z`` is recomputed, never stored), where autodiff of the
checkpointed per-memory read recomputes both layers and then needs four more.

:func:`visible_mlp_read` applies it over the causal query blocks of constant segmentation, each block reading only
the memories visible to *all* its tokens (``i < start // C``): those need no mask, so the contraction over memories is
exact even for a non-finite memory elsewhere. The diagonal memories of a block (visible to some of its tokens only)
are read by the masked dense read (:func:`causal_deep_read`), so a non-finite memory a token cannot see never reaches
it. Shapes: ``b`` batch, ``h`` heads, ``t`` tokens, ``n`` memories, ``d`` model width of the MLP, ``f`` hidden width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mc_jax.ops.memories import MemorySpec
from mc_jax.ops.reads import dense_mix
from mc_jax.ops.utils import gelu_and_derivative
from mc_jax.typing import Array, Bool, Float, PyTree


def _flat(w2: Float[Array, "b h m f d"], w1: Float[Array, "b h d m f"]):
    """The memories' weights with memory and hidden axes merged: ``W2 [b h (m f) d]``, ``W1 [b h d (m f)]``
    (one wide matmul each; XLA:CPU runs the merged contraction ~2x faster than the same einsum over ``m, f``)."""
    b, h, m, f, d = w2.shape
    return w2.reshape(b, h, m * f, d), w1.reshape(b, h, d, m * f)


def _mix(x, gamma, w2, w1):
    """``sum_i gamma_i M_i(x)`` of one query block: ``x [b h c d]``, ``gamma [b h c m]``, ``w2 [b h m f d]``,
    ``w1 [b h d m f]``."""
    (b, h, c, m), f = gamma.shape, w2.shape[3]
    w2f, w1f = _flat(w2, w1)
    hidden = jax.nn.gelu(jnp.einsum("bhcd,bhkd->bhck", x, w2f).reshape(b, h, c, m, f))
    mixed = (gamma[..., None] * hidden).reshape(b, h, c, m * f)
    return jnp.einsum("bhck,bhdk->bhcd", mixed, w1f) + x * gamma.sum(-1)[..., None]


def _mix_bwd(x, gamma, w2, w1, dy):
    """Cotangents ``(dx, dgamma, dw2, dw1)`` of :func:`_mix` (``z = x W2^T`` recomputed)."""
    (b, h, c, m), f = gamma.shape, w2.shape[3]
    w2f, w1f = _flat(w2, w1)
    hidden, dgelu = gelu_and_derivative(jnp.einsum("bhcd,bhkd->bhck", x, w2f).reshape(b, h, c, m, f))
    a = jnp.einsum("bhcd,bhdk->bhck", dy, w1f).reshape(b, h, c, m, f)  # d y / d (gamma h)
    dgamma = jnp.sum(hidden * a, -1) + jnp.einsum("bhcd,bhcd->bhc", x, dy)[..., None]
    flat = lambda z: z.reshape(b, h, c, m * f)
    dw1 = jnp.einsum("bhcd,bhck->bhdk", dy, flat(gamma[..., None] * hidden)).reshape(w1.shape)
    dz = flat(gamma[..., None] * a * dgelu)
    dw2 = jnp.einsum("bhck,bhcd->bhkd", dz, x).reshape(w2.shape)
    dx = jnp.einsum("bhck,bhkd->bhcd", dz, w2f) + dy * gamma.sum(-1)[..., None]
    return dx, dgamma, dw2, dw1


def _visible(start: int, size: int) -> int:
    """Memories visible to every token of a query block starting at ``start`` (a multiple of ``size``)."""
    return start // size


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def visible_mlp_read(x: Float[Array, "b h t d"], gamma: Float[Array, "b h t n"], w2: Float[Array, "b h n f d"],
                     w1: Float[Array, "b h d n f"], size: int, block: int) -> Float[Array, "b h t d"]:
    """``y_t = sum_{i < s // size} gamma_ti M_i(x_t)`` for every token ``t`` of the query block ``[s, s + block)``.

    ``block`` is a multiple of ``size`` dividing ``t``; ``w1`` has the memory axis after ``d``. Blocks that see no
    memory give zeros.
    """
    ys = []
    for start in range(0, x.shape[2], block):
        xb, n = x[:, :, start:start + block], _visible(start, size)
        ys.append(jnp.zeros_like(xb) if n == 0 else _mix(xb, gamma[:, :, start:start + block, :n], w2[:, :, :n],
                                                          w1[:, :, :, :n]))
    return jnp.concatenate(ys, axis=2)


def _visible_fwd(x, gamma, w2, w1, size, block):
    return visible_mlp_read(x, gamma, w2, w1, size, block), (x, gamma, w2, w1)


def _visible_bwd(size, block, res, dy):
    """Per query block :func:`_mix_bwd`; the memory cotangents accumulate in place over the blocks."""
    x, gamma, w2, w1 = res
    dxs, dgammas = [], []
    dw2, dw1 = jnp.zeros_like(w2), jnp.zeros_like(w1)
    for start in range(0, x.shape[2], block):
        sl, n = slice(start, start + block), _visible(start, size)
        if n == 0:
            dxs.append(jnp.zeros_like(x[:, :, sl]))
            dgammas.append(jnp.zeros_like(gamma[:, :, sl]))
            continue
        dx, dg, d2, d1 = _mix_bwd(x[:, :, sl], gamma[:, :, sl, :n], w2[:, :, :n], w1[:, :, :, :n], dy[:, :, sl])
        dxs.append(dx)
        dgammas.append(jnp.pad(dg, [(0, 0)] * 3 + [(0, gamma.shape[-1] - n)]))
        dw2, dw1 = dw2.at[:, :, :n].add(d2), dw1.at[:, :, :, :n].add(d1)
    return jnp.concatenate(dxs, axis=2), jnp.concatenate(dgammas, axis=2), dw2, dw1


visible_mlp_read.defvjp(_visible_fwd, _visible_bwd)


def causal_deep_read(spec: MemorySpec, stack: PyTree, gamma: Float[Array, "b t h n"],
                     available: Bool[Array, "b t h n"], x: Float[Array, "b t h d"], *, size: int,
                     block: int) -> Float[Array, "b t h d"]:
    """``sum_i gamma[t, i] M_i(x_t)`` over a deep stack (leaves ``W1 [b n h d f]``, ``W2 [b n h f d]``): per query
    block, :func:`visible_mlp_read` over the memories every token of it sees, plus the masked dense read of the
    diagonal memories ``start // size <= i < (stop - 1) // size`` (``block`` a multiple of ``size`` dividing ``t``).
    """
    heads_first = lambda a: jnp.moveaxis(a, 2, 1)  # b t h ... -> b h t ...
    w2, w1 = heads_first(stack["W2"]), jnp.moveaxis(stack["W1"], (1, 2), (3, 1))  # b h n f d, b h d n f
    y = jnp.moveaxis(visible_mlp_read(heads_first(x), heads_first(gamma), w2, w1, size, block), 1, 2)
    diagonal = jax.checkpoint(lambda st, g, a, xb: dense_mix(spec, "read", st, g, xb, xb.shape[1], a))
    parts = []
    for start in range(0, x.shape[1], block):
        stop = start + block
        lo, hi = _visible(start, size), max(_visible(start, size), (stop - 1) // size)
        if hi == lo:
            parts.append(jnp.zeros_like(x[:, start:stop]))
            continue
        cut = lambda a: a[:, start:stop, :, lo:hi]
        states = jax.tree.map(lambda s: s[:, lo:hi], stack)
        # dense_mix adds the residual x * sum(gamma) of the diagonal memories: the visible part has its own share
        parts.append(diagonal(states, cut(gamma), cut(available), x[:, start:stop]))
    return y + jnp.concatenate(parts, axis=1)
