"""The cached-memory read kernel: ``y[t] = sum_j gamma[t, j] q_t^T S_{slot(j)}`` per query block, fp32 accumulation.

Dense: ``slot(j) = j`` over all ``M`` cached states. Sparse (SSC): ``slot(j) = idx[bh, qb, j]`` for ``j < K``, the
slots listed for query block ``qb``, so only ``K`` states per block are read (cost grows with ``K``, not ``M``).

Strategies (one body, see ``_accumulate``):
  * ``gpu``: grid ``(BH, T/bq, Dv/bv)``, all parallel; an in-kernel ``lax.fori_loop`` over the ``J`` slots
    accumulates in registers; sparse indices are an ordinary int32 input ``[BH, nq, K]``; states wider than 64 are
    tiled by columns (``block_v``, default :func:`~mc_jax.kernels.cache_read.config.gpu_block_v`).
  * ``tpu``: grid ``(BH, T/bq, J)`` with the slot axis ``"arbitrary"`` (reduction) and the accumulator in VMEM
    scratch; sparse indices are scalar-prefetched (``PrefetchScalarGridSpec(num_scalar_prefetch=1)``, a flat
    ``[BH * nq * K]`` SMEM array) and feed the state BlockSpec's ``index_map``, so only selected states are DMA'd.

Kernel layout (prepared by ``api``): x ``[BH, T, dk]``, gamma ``[BH, J, T, 1]`` (J = M dense, K sparse; the trailing
1 keeps a (bq, 1) tile that broadcasts over the lanes), stack ``[BH, M, dk, dv]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mc_jax.kernels._common import compiler_params, dot


def _accumulate(acc, x, gamma, state):
    # select, not multiply: a state with zero weight (not yet visible to these tokens) may hold NaN / inf
    term = gamma.astype(acc.dtype) * dot(x.astype(acc.dtype), state.astype(acc.dtype), acc.dtype)
    return acc + jnp.where(gamma != 0, term, 0.0)


def _gpu_kernel(*refs, n_slots: int, sparse: bool):
    if sparse:
        x_ref, g_ref, s_ref, idx_ref, o_ref = refs
    else:
        x_ref, g_ref, s_ref, o_ref = refs
    x = x_ref[0]

    def body(j, acc):
        slot = idx_ref[0, 0, j] if sparse else j
        return _accumulate(acc, x, g_ref[0, j], s_ref[0, slot])

    acc = jnp.zeros(o_ref.shape[1:], o_ref.dtype)
    o_ref[0] = jax.lax.fori_loop(0, n_slots, body, acc)


def _tpu_kernel(*refs, n_slots: int, sparse: bool):
    if sparse:
        _, x_ref, g_ref, s_ref, o_ref, acc_ref = refs  # the prefetched indices are used by the index_maps only
    else:
        x_ref, g_ref, s_ref, o_ref, acc_ref = refs
    j = pl.program_id(2)

    @pl.when(j == 0)
    def _():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    acc_ref[...] = _accumulate(acc_ref[...], x_ref[0], g_ref[0, 0], s_ref[0, 0])

    @pl.when(j == n_slots - 1)
    def _():
        o_ref[0] = acc_ref[...].astype(o_ref.dtype)


def cache_read_pallas(x, gamma, stack, slot_idx=None, *, block_q: int, strategy: str, interpret,
                      block_v: int | None = None, num_warps: int = 4, num_stages: int = 1):
    """Kernel-layout read; ``slot_idx [BH, nq, K]`` (int32) selects the sparse variant. Returns ``[BH, T, dv]``."""
    bh, t, dk = x.shape
    n_slots = gamma.shape[1]
    m, dv = stack.shape[1], stack.shape[-1]
    nq = t // block_q
    acc = jnp.promote_types(x.dtype, jnp.float32)
    sparse = slot_idx is not None
    out_shape = jax.ShapeDtypeStruct((bh, t, dv), acc)
    flops = 2 * bh * t * n_slots * dk * dv
    nbytes = (x.size * x.dtype.itemsize + gamma.size * gamma.dtype.itemsize + bh * t * dv * acc.itemsize
              + bh * nq * n_slots * dk * dv * stack.dtype.itemsize)
    common = dict(out_shape=out_shape, interpret=interpret,
                  cost_estimate=pl.CostEstimate(flops=flops, transcendentals=0, bytes_accessed=nbytes),
                  name=f"mc_cache_read_{'sparse' if sparse else 'dense'}_{strategy}")
    if strategy == "gpu":
        bv = block_v or dv
        in_specs = [pl.BlockSpec((1, block_q, dk), lambda b, q, c: (b, q, 0)),
                    pl.BlockSpec((1, n_slots, block_q, 1), lambda b, q, c: (b, 0, q, 0)),
                    pl.BlockSpec((1, m, dk, bv), lambda b, q, c: (b, 0, 0, c))]
        inputs = [x, gamma, stack]
        if sparse:
            in_specs.append(pl.BlockSpec((1, 1, n_slots), lambda b, q, c: (b, q, 0)))
            inputs.append(slot_idx.astype(jnp.int32))
        return pl.pallas_call(
            functools.partial(_gpu_kernel, n_slots=n_slots, sparse=sparse), grid=(bh, nq, dv // bv),
            in_specs=in_specs, out_specs=pl.BlockSpec((1, block_q, bv), lambda b, q, c: (b, q, c)),
            compiler_params=compiler_params(strategy, ("parallel",) * 3, num_warps, num_stages),
            **common)(*inputs)

    kernel = functools.partial(_tpu_kernel, n_slots=n_slots, sparse=sparse)
    scratch = [pltpu.VMEM((block_q, dv), acc)]
    params = compiler_params(strategy, ("parallel", "parallel", "arbitrary"))
    if not sparse:
        return pl.pallas_call(
            kernel, grid=(bh, nq, n_slots),
            in_specs=[pl.BlockSpec((1, block_q, dk), lambda b, q, j: (b, q, 0)),
                      pl.BlockSpec((1, 1, block_q, 1), lambda b, q, j: (b, j, q, 0)),
                      pl.BlockSpec((1, 1, dk, dv), lambda b, q, j: (b, j, 0, 0))],
            out_specs=pl.BlockSpec((1, block_q, dv), lambda b, q, j: (b, q, 0)),
            scratch_shapes=scratch, compiler_params=params, **common)(x, gamma, stack)
    flat = lambda b, q, j: (b * nq + q) * n_slots + j
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1, grid=(bh, nq, n_slots),
        in_specs=[pl.BlockSpec((1, block_q, dk), lambda b, q, j, idx: (b, q, 0)),
                  pl.BlockSpec((1, 1, block_q, 1), lambda b, q, j, idx: (b, j, q, 0)),
                  pl.BlockSpec((1, 1, dk, dv), lambda b, q, j, idx: (b, idx[flat(b, q, j)], 0, 0))],
        out_specs=pl.BlockSpec((1, block_q, dv), lambda b, q, j, idx: (b, q, 0)),
        scratch_shapes=scratch)
    return pl.pallas_call(kernel, grid_spec=grid_spec, compiler_params=params, **common)(
        slot_idx.astype(jnp.int32).reshape(-1), x, gamma, stack)
