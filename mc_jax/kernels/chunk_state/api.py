"""The chunk-state pass as a Pallas kernel, a drop-in for the XLA op ``linear.state_pass``.

The Pallas path is a ``jax.custom_vjp``: forward = XLA per-chunk terms (parallel) + the kernel (sequential);
backward = ``jax.vjp`` of the XLA op ``linear.state_pass`` recomputed from the saved inputs, so gradients are exactly
those of the XLA op.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mc_jax.kernels._common import Options, resolve_interpret, resolve_strategy
from mc_jax.kernels.chunk_state import reference
from mc_jax.kernels.chunk_state.config import BlockSizes
from mc_jax.kernels.chunk_state.pallas import chunk_state_pallas
from mc_jax.typing import Array, Float


def _to_rows(x):
    """``[r, n, h, ...] -> [r * h, n, ...]``."""
    x = jnp.moveaxis(x, 2, 1)
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _from_rows(x, r: int):
    """Inverse of :func:`_to_rows`."""
    return jnp.moveaxis(x.reshape(r, -1, *x.shape[1:]), 1, 2)


def _forward(k, v, gates, state, chunk: int, opts: Options):
    k_to_end, u_hat, w, total = reference.chunk_terms(k, v, gates, chunk)
    r, n, h, c, dk = k_to_end.shape
    dv = u_hat.shape[-1]
    acc = k_to_end.dtype
    decay = jnp.broadcast_to(jnp.exp(total)[..., None, None], (r, n, h, 1, dv))
    starts, u, final = chunk_state_pallas(
        _to_rows(jnp.swapaxes(k_to_end, -1, -2)), _to_rows(u_hat), None if w is None else _to_rows(w),
        _to_rows(decay), state.astype(acc).reshape(r * h, dk, dv),
        block_v=opts.block, strategy=opts.strategy, interpret=opts.interpret,
        num_warps=opts.num_warps, num_stages=opts.num_stages, precision=opts.precision)
    return _from_rows(starts, r), _from_rows(u, r), final.reshape(r, h, dk, dv)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _state_pass_pallas(k, v, gates, state, chunk, opts):
    return _forward(k, v, gates, state, chunk, opts)


def _fwd(k, v, gates, state, chunk, opts):
    return _forward(k, v, gates, state, chunk, opts), (k, v, gates, state)


def _bwd(chunk, opts, residuals, cotangents):
    _, vjp = jax.vjp(lambda k, v, g, s: reference.state_pass(k, v, g, s, chunk), *residuals)
    return vjp(cotangents)


_state_pass_pallas.defvjp(_fwd, _bwd)


def _options(dk: int, dv: int, strategy: str, interpret, block_sizes: BlockSizes | None) -> Options:
    strategy = resolve_strategy(strategy)
    sizes = block_sizes or BlockSizes.get_default(dv, strategy, dk)
    return Options(strategy=strategy, interpret=resolve_interpret(interpret, strategy),
                   block=sizes.resolve_block_v(dv, strategy), num_warps=sizes.num_warps, num_stages=sizes.num_stages,
                   precision=sizes.precision)


def state_pass(
    k: Float[Array, "r t h dk"],
    v: Float[Array, "r t h dv"],
    gates: dict[str, Array],
    state: Float[Array, "r h dk dv"],
    chunk: int,
    valid: Array | None = None,
    *,
    strategy: str = "auto",
    interpret=None,
    block_sizes: BlockSizes | None = None,
):
    """Drop-in for :func:`mc_jax.ops.memories.linear.state_pass` (same arguments, same results).

    Args:
        k, v, gates, state, chunk, valid: as ``linear.state_pass`` (``t`` a multiple of ``chunk``; ``gates`` holds
            ``log_decay`` and, for the delta rule, ``beta``).
        strategy: ``auto`` (``tpu`` on TPU, else ``gpu``), ``gpu`` (in-kernel loop over chunks) or ``tpu``
            (chunk grid axis ``"arbitrary"``, state in VMEM scratch).
        interpret: ``None`` (interpret exactly on CPU), a bool, or ``pltpu.InterpretParams`` (TPU interpreter).
        block_sizes: :class:`BlockSizes` (default :meth:`BlockSizes.get_default`).

    Returns:
        ``(chunk_starts [r n h dk dv], u [r n h c dv], final [r h dk dv])`` in the state dtype.
    """
    del valid  # padded tokens are identity steps (k = 0, beta = 0, log_decay = 0), as in the op
    gates = {name: g for name, g in gates.items() if name in ("log_decay", "beta")}
    return _state_pass_pallas(k, v, gates, state, chunk, _options(k.shape[-1], v.shape[-1], strategy, interpret,
                                                                             block_sizes))


def state_pass_and_read(
    q: Float[Array, "r t h dk"],
    k: Float[Array, "r t h dk"],
    v: Float[Array, "r t h dv"],
    gates: dict[str, Array],
    state: Float[Array, "r h dk dv"],
    chunk: int,
    valid: Array | None = None,
    **kwargs,
):
    """``state_pass`` (kernel) then the parallel online read ``linear.read`` (XLA).

    Replaces ``mem.state_pass`` + ``mem.read_online`` for linear-family memories. Returns
    ``(chunk_data, final, y_online)`` with ``chunk_data = (chunk_starts, u)`` exactly as ``mem.state_pass`` gives it
    and ``y_online [r t h dv]``; ``kwargs`` go to :func:`state_pass`.
    """
    starts, u, final = state_pass(k, v, gates, state, chunk, valid, **kwargs)
    y = reference.read(q, k, gates, starts, u, chunk)
    return (starts, u), final, y
