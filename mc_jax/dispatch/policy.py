"""Which implementations ``impl`` enables: ``xla`` none, ``pallas`` every kernel, ``auto`` the measured winners.

The table of ``auto`` is per backend, with the largest head dim each kernel was measured faster at: only where a
kernel beat XLA. On an H100 (``benchmarks/results/gpu_h100_2026-11-26``, ``docs/performance.md``) the top-k sparse
read won at Dk = Dv = 64 (whole op 1.4-2.9x, read alone 1.2-20x) and lost at 128 (0.12x); the chunk-state pass and
the dense read lost to XLA's batched matmuls with their first defaults and were not re-measured after the
chunk-state tile fix. TPU: the kernels' target layout (grid-carried state in VMEM); not measured here.
"""

from __future__ import annotations

import functools
import warnings

import jax

from mc_jax.dispatch.table import TABLE, build_stages
from mc_jax.ops.memories import MemorySpec
from mc_jax.ops.stages import Stages

# The kernels ``impl="pallas"`` uses (linear memories, whole-sequence form).
KERNELS = frozenset({"chunk_state", "cache_read_dense", "cache_read_sparse"})
# Exact XLA algorithms ``impl="auto"`` uses on every backend (after any enabled kernel): reads that do no work for
# states a token cannot see (mc_jax.ops.reads_causal), ssc over matrix memories as a per-block top-k choice and a
# grouped matmul over the rows sorted by state (mc_jax.ops.reads_grouped) and, for linear memories, the
# segment-gated quadratic form (mc_jax.ops.reads_quadratic) where it has fewer FLOPs than the state read
# (mc_jax.dispatch.cost). They apply by shape (``TABLE``'s ``applies``); fewer FLOPs than the dense read whenever
# they apply. ``impl="xla"`` keeps the dense reference reads. The fused gate softmax + read (mc_jax.ops.reads_gated)
# removes the [B, T, H, N] weights and their memory-bound pass where the quadratic form does not apply.
ALGORITHMS = frozenset({"residual_prefix", "sparse_gather", "causal_read", "blocked_residual", "quadratic",
                        "fused_gate_read", "topk_gated_read"})
AUTO_KERNELS: dict[str, dict[str, int]] = {
    "cpu": {},
    "gpu": {"cache_read_sparse": 64},
    "tpu": {name: 1 << 30 for name in KERNELS},
}


@functools.cache
def _warn_fallback(reason: str) -> None:
    warnings.warn(f"impl='pallas': {reason}; using the XLA implementation", stacklevel=6)


def _entry(name: str):
    return next(e for entries in TABLE.values() for e in entries if e.name == name)


def resolve_impl(impl: str, spec: MemorySpec, streaming: bool, head_dim: int = 0) -> frozenset[str]:
    """The kernels a call uses (empty: all XLA).

    ``xla``: none. ``pallas``: every kernel (:data:`KERNELS`). ``auto``: the kernels measured faster on this backend
    at this ``head_dim`` (``max(Dk, Dv)``; :data:`AUTO_KERNELS`; none on CPU) and the exact XLA algorithms
    (:data:`ALGORITHMS`, whole-sequence form; each applies by shape). Deep memories and the streaming form
    have no kernel: ``pallas`` falls back to XLA there with a one-time warning, ``auto`` silently.
    """
    if impl == "xla":
        return frozenset()
    if impl == "pallas":
        kernels = KERNELS
    else:
        table = AUTO_KERNELS.get(jax.default_backend(), {})
        kernels = frozenset(name for name, max_dim in table.items() if head_dim <= max_dim) | ALGORITHMS
    for_family = frozenset(name for name in kernels if spec.family in _entry(name).families)
    if kernels and not for_family:
        if impl == "pallas":
            _warn_fallback(f"no kernel for deep memory {spec.name!r}")
        return frozenset()
    served = frozenset(name for name in for_family if _entry(name).streaming or not streaming)
    if for_family and not served and impl == "pallas":
        _warn_fallback("the streaming form (cache / return_cache) has no kernel yet")
    return served


def plan(impl: str, spec: MemorySpec, streaming: bool, head_dim: int) -> Stages:
    """The planner of ``memory_caching``: the :class:`~mc_jax.ops.stages.Stages` of this call."""
    return build_stages(resolve_impl(impl, spec, streaming, head_dim))
