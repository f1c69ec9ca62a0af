"""Dispatch for the cached-memory read of linear memories: dense (all slots) and sparse (listed slots per block).

Both Pallas paths are ``jax.custom_vjp``s whose backward is the ``jax.vjp`` of the XLA reference
(``reads.dense_mix``, recomputed), so gradients are exactly those of the XLA op.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from mc_jax.kernels._common import Options, resolve_interpret, resolve_strategy
from mc_jax.kernels.cache_read import reference
from mc_jax.kernels.cache_read.config import BlockSizes, default_block_q  # noqa: F401 - re-exported
from mc_jax.kernels.cache_read.pallas import cache_read_pallas
from mc_jax.ops import reads
from mc_jax.ops.memories import LINEAR, MemorySpec
from mc_jax.typing import Array, Float, Int


def _options(x, stack, strategy: str, interpret, block_q: int | None, block_sizes: BlockSizes | None) -> Options:
    """Resolved kernel options; ``block_q`` is shorthand for ``BlockSizes(block_q=...)``."""
    if block_q is not None and block_sizes is not None and block_sizes.block_q not in (None, block_q):
        raise ValueError(f"block_q={block_q} disagrees with block_sizes.block_q={block_sizes.block_q}; pass one")
    sizes = block_sizes or BlockSizes()
    if block_q is not None:
        sizes = dataclasses.replace(sizes, block_q=block_q)  # validated by BlockSizes
    strategy = resolve_strategy(strategy)
    bq, bv, warps, stages = sizes.resolve(x.shape[1], x.shape[-1], stack.shape[-1], strategy)
    return Options(strategy=strategy, interpret=resolve_interpret(interpret, strategy), block=bq, block_v=bv,
                   num_warps=warps, num_stages=stages)


def _kernel_layout(stack, gamma, x):
    b, t, h, dk = x.shape
    m = gamma.shape[-1]
    xs = jnp.moveaxis(x, 2, 1).reshape(b * h, t, dk)
    gs = jnp.transpose(gamma, (0, 2, 3, 1)).reshape(b * h, m, t, 1)
    ss = jnp.moveaxis(stack, 2, 1).reshape(b * h, stack.shape[1], *stack.shape[3:])
    return xs, gs, ss


def _unlayout(y, b: int, h: int):
    return jnp.moveaxis(y.reshape(b, h, *y.shape[1:]), 1, 2)


def _dense_forward(stack, gamma, x, opts: Options):
    b, t, h, _ = x.shape
    xs, gs, ss = _kernel_layout(stack, gamma, x)
    y = cache_read_pallas(xs, gs, ss, block_q=opts.block, strategy=opts.strategy, interpret=opts.interpret,
                          block_v=opts.block_v, num_warps=opts.num_warps, num_stages=opts.num_stages)
    return _unlayout(y, b, h)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _dense_pallas(stack, gamma, x, block, opts):
    return _dense_forward(stack, gamma, x, opts)


def _dense_fwd(stack, gamma, x, block, opts):
    return _dense_forward(stack, gamma, x, opts), (stack, gamma, x)


def _dense_bwd(block, opts, residuals, ct):
    return jax.vjp(lambda s, g, x: reference.dense_mix(s, g, x, block), *residuals)[1](ct)


_dense_pallas.defvjp(_dense_fwd, _dense_bwd)


def dense_mix(
    spec: MemorySpec,
    what: str,
    stack,
    gamma: Float[Array, "b t h m"],
    x: Float[Array, "b t h i"],
    block: int,
    *,
    strategy: str = "auto",
    interpret=None,
    block_q: int | None = None,
    block_sizes: BlockSizes | None = None,
) -> Float[Array, "b t h o"]:
    """Drop-in for :func:`mc_jax.ops.reads.dense_mix` (same arguments, same result).

    The kernel serves the linear family (``what == "read"``): ``y[t] = sum_m gamma[t, m] x_t^T S_m`` with stack
    ``[b m h dk dv]``; other maps (deep memories) go to ``reads.dense_mix``. Which implementation a call of
    ``memory_caching`` uses is decided by :mod:`mc_jax.dispatch`.
    ``block`` is the XLA path's query block (also the one its backward uses); the kernel's is ``block_q``
    (default: the largest divisor of T <= 128, a multiple of 8 on TPU); ``block_sizes`` sets every tile
    (:class:`~mc_jax.kernels.cache_read.config.BlockSizes`).
    """
    if spec.family is not LINEAR or what != "read":
        return reads.dense_mix(spec, what, stack, gamma, x, block)
    return _dense_pallas(stack, gamma, x, block, _options(x, stack, strategy, interpret, block_q, block_sizes))


def slot_indices(gamma: Float[Array, "b t h m"], block_q: int, capacity: int) -> Int[Array, "b h nq k"]:
    """Per query block, ``capacity`` slots covering every slot that some token of the block weights (gamma != 0).

    Slots are ranked by the block's largest ``|gamma|``; when a block uses at most ``capacity`` slots (always true for
    ``capacity >= min(M, block_q * top_k)`` with SSC's per-token top-k) the sparse read is exact. Surplus entries are
    unused slots (zero weight), so they add nothing. Indices are a routing decision: no gradient flows through them.
    """
    b, t, h, m = gamma.shape
    if not 1 <= capacity <= m:
        raise ValueError(f"capacity must be in [1, M={m}]; got {capacity}")
    score = jnp.abs(jax.lax.stop_gradient(gamma)).reshape(b, t // block_q, block_q, h, m).max(2)  # b nq h m
    _, idx = jax.lax.top_k(jnp.moveaxis(score, 2, 1), capacity)
    return idx.astype(jnp.int32)


def _sparse_forward(stack, gamma, x, slot_idx, opts: Options):
    b, t, h, _ = x.shape
    bq = opts.block
    # gamma of the listed slots, per token: [b t h k]
    per_token = jnp.repeat(jnp.moveaxis(slot_idx, 1, 2), bq, axis=1)  # b t h k
    g_sel = jnp.take_along_axis(gamma, per_token, axis=-1)
    xs, gs, ss = _kernel_layout(stack, g_sel, x)
    y = cache_read_pallas(xs, gs, ss, slot_idx.reshape(b * h, t // bq, -1), block_q=bq, strategy=opts.strategy,
                          interpret=opts.interpret, block_v=opts.block_v, num_warps=opts.num_warps,
                          num_stages=opts.num_stages)
    return _unlayout(y, b, h)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _sparse_pallas(stack, gamma, x, slot_idx, opts):
    return _sparse_forward(stack, gamma, x, slot_idx, opts)


def _sparse_fwd(stack, gamma, x, slot_idx, opts):
    return _sparse_forward(stack, gamma, x, slot_idx, opts), (stack, gamma, x, slot_idx)


def _sparse_bwd(opts, residuals, ct):
    stack, gamma, x, slot_idx = residuals
    grads = jax.vjp(lambda s, g, x: reference.sparse_mix(s, g, x, slot_idx, opts.block), stack, gamma, x)[1](ct)
    return (*grads, None)


_sparse_pallas.defvjp(_sparse_fwd, _sparse_bwd)


def sparse_mix(
    stack: Float[Array, "b m h dk dv"],
    gamma: Float[Array, "b t h m"],
    x: Float[Array, "b t h dk"],
    slot_idx: Int[Array, "b h nq k"],
    *,
    block_q: int,
    strategy: str = "auto",
    interpret=None,
    block_sizes: BlockSizes | None = None,
) -> Float[Array, "b t h dv"]:
    """Top-k (SSC) read of cached linear memories: ``y[t] = sum_{m in slot_idx[block(t)]} gamma[t, m] x_t^T S_m``.

    Only the ``k`` listed states per query block of ``block_q`` tokens are read (TPU: scalar-prefetched indices
    drive the DMA). Equal to ``dense_mix`` whenever ``gamma`` is zero outside the listed slots (see
    :func:`slot_indices`). Indices must be distinct within a block (``lax.top_k`` gives that).
    """
    b, t, h, _ = x.shape
    if slot_idx.ndim != 4 or slot_idx.shape[:3] != (b, h, t // block_q) or t % block_q:
        raise ValueError(f"slot_idx must be [B, H, T / block_q, k] = {(b, h, t // block_q, '*')}; got {slot_idx.shape}")
    return _sparse_pallas(stack, gamma, x, slot_idx, _options(x, stack, strategy, interpret, block_q, block_sizes))
