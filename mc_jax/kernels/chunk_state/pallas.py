"""The chunk-state kernel: the sequential pass over inner chunks of the linear memories.

Per run-head ``r`` (``R = runs * heads`` rows) and Dv tile, from the initial state ``S``:
    for every chunk n:   starts[n] = S
                         U[n]      = U_hat[n] - W[n] S          (delta rule; U = U_hat = V otherwise)
                         S         = exp(a_n) S + K_end[n]^T U[n]
    final = S
with fp32 accumulation (the state dtype). The state's columns are independent, so ``Dv`` is tiled (``block_v``).

Strategies (one body, see ``_step``):
  * ``gpu``: grid ``(R, Dv/bv)``, all parallel; an in-kernel ``lax.fori_loop`` over chunks carries ``S``.
  * ``tpu``: grid ``(R, Dv/bv, n)`` with the chunk axis ``"arbitrary"``; ``S`` lives in a VMEM scratch, initialised
    under ``pl.when(program_id(2) == 0)``; ``final`` is a revisited output block written at the last chunk.

Shapes (kernel layout, prepared by ``api``): k_end_t ``[R, n, dk, c]`` (transposed so ``K_end^T U`` is a plain
matmul), u_hat ``[R, n, c, dv]``, w ``[R, n, c, dk]`` (optional), decay ``[R, n, 1, dv]`` (``exp(a_n)`` broadcast
over the lanes, avoiding scalar loads), s0 ``[R, dk, dv]``.
"""

from __future__ import annotations

import functools
import math

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mc_jax.kernels._common import compiler_params, dot


def _step(i, s, k_ref, uh_ref, w_ref, dec_ref, starts_ref, u_ref, precision):
    """One chunk (index ``i`` into the refs' chunk axis) from state ``s [dk, bv]``; returns the next state."""
    acc = s.dtype
    starts_ref[0, i] = s.astype(starts_ref.dtype)
    u = uh_ref[0, i].astype(acc)
    if w_ref is not None:
        u = u - dot(w_ref[0, i].astype(acc), s, acc, precision)
    u_ref[0, i] = u.astype(u_ref.dtype)
    return dec_ref[0, i].astype(acc) * s + dot(k_ref[0, i].astype(acc), u, acc, precision)


def _kernel(*refs, has_w: bool, strategy: str, n_chunks: int, precision: str):
    if has_w:
        k_ref, uh_ref, w_ref, dec_ref, s0_ref, starts_ref, u_ref, final_ref, *scratch = refs
    else:
        k_ref, uh_ref, dec_ref, s0_ref, starts_ref, u_ref, final_ref, *scratch = refs
        w_ref = None
    step = functools.partial(_step, k_ref=k_ref, uh_ref=uh_ref, w_ref=w_ref, dec_ref=dec_ref,
                             starts_ref=starts_ref, u_ref=u_ref, precision=precision)
    if strategy == "gpu":
        s = jax.lax.fori_loop(0, n_chunks, lambda i, s: step(i, s), s0_ref[0].astype(final_ref.dtype))
        final_ref[0] = s
        return
    (s_ref,) = scratch
    n = pl.program_id(2)

    @pl.when(n == 0)
    def _():
        s_ref[...] = s0_ref[0].astype(s_ref.dtype)

    s = step(0, s_ref[...])
    s_ref[...] = s

    @pl.when(n == n_chunks - 1)
    def _():
        final_ref[0] = s.astype(final_ref.dtype)


def chunk_state_pallas(k_end_t, u_hat, w, decay, s0, *, block_v: int, strategy: str, interpret,
                       num_warps: int = 4, num_stages: int = 1, precision: str = "highest"):
    """Run the kernel on kernel-layout inputs; returns ``(starts [R n dk dv], u [R n c dv], final [R dk dv])``."""
    rows, n, dk, c = k_end_t.shape
    dv = u_hat.shape[-1]
    acc = s0.dtype
    has_w = w is not None
    nv = dv // block_v
    if strategy == "gpu":
        grid = (rows, nv)
        chunked = lambda rest, vtiled: pl.BlockSpec(
            (1, n, *rest), (lambda r, j: (r, 0, 0, j)) if vtiled else (lambda r, j: (r, 0, 0, 0)))
        whole = lambda: pl.BlockSpec((1, dk, block_v), lambda r, j: (r, 0, j))
        semantics = ("parallel", "parallel")
        scratch = []
    else:
        grid = (rows, nv, n)
        chunked = lambda rest, vtiled: pl.BlockSpec(
            (1, 1, *rest), (lambda r, j, i: (r, i, 0, j)) if vtiled else (lambda r, j, i: (r, i, 0, 0)))
        whole = lambda: pl.BlockSpec((1, dk, block_v), lambda r, j, i: (r, 0, j))
        semantics = ("parallel", "parallel", "arbitrary")
        scratch = [pltpu.VMEM((dk, block_v), acc)]
    in_specs = [chunked((dk, c), False), chunked((c, block_v), True)]
    inputs = [k_end_t, u_hat]
    if has_w:
        in_specs.append(chunked((c, dk), False))
        inputs.append(w)
    in_specs += [chunked((1, block_v), True), whole()]
    inputs += [decay, s0]
    out_shape = (jax.ShapeDtypeStruct((rows, n, dk, dv), acc), jax.ShapeDtypeStruct((rows, n, c, dv), acc),
                 jax.ShapeDtypeStruct((rows, dk, dv), acc))
    out_specs = (chunked((dk, block_v), True), chunked((c, block_v), True), whole())
    flops = rows * n * (2 * dk * c * dv * (2 if has_w else 1) + 2 * dk * dv)
    nbytes = sum(x.size * x.dtype.itemsize for x in inputs) + sum(
        math.prod(o.shape) * o.dtype.itemsize for o in out_shape)
    return pl.pallas_call(
        functools.partial(_kernel, has_w=has_w, strategy=strategy, n_chunks=n, precision=precision),
        out_shape=out_shape,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        scratch_shapes=scratch,
        compiler_params=compiler_params(strategy, semantics, num_warps, num_stages),
        cost_estimate=pl.CostEstimate(flops=flops, transcendentals=0, bytes_accessed=nbytes),
        interpret=interpret,
        name=f"mc_chunk_state_{strategy}",
    )(*inputs)
