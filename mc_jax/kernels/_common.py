"""Shared plumbing for the Pallas kernels: strategy / interpret resolution and compiler parameters.

``check_choice`` is re-exported from :mod:`mc_jax.ops.utils` (its one home).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from mc_jax.ops.utils import check_choice

STRATEGIES = ("auto", "gpu", "tpu")
# In-kernel matmul precision. "highest" (the default): fp32 (ieee) products and accumulation, never TF32 /
# single-pass bf16, so kernels match the XLA op at the float32 tolerance. "default": the backend's choice (TF32 on
# NVIDIA GPUs; on an H100 the chunk-state kernel ran 1.2-3.9x faster at a max error of 5-7e-4, see
# docs/performance.md); identical to "highest" on CPU.
PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "default": jax.lax.Precision.DEFAULT}


def resolve_strategy(strategy: str) -> str:
    """``auto``: ``tpu`` on a TPU backend, ``gpu`` otherwise (CPU runs the gpu-style kernel in interpret mode)."""
    check_choice("strategy", strategy, STRATEGIES)
    if strategy != "auto":
        return strategy
    return "tpu" if jax.default_backend() == "tpu" else "gpu"


def resolve_interpret(interpret: Any, strategy: str) -> Any:
    """``None``: interpret exactly when running on CPU. ``True`` with the tpu strategy uses the TPU interpreter."""
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    if interpret is True and strategy == "tpu":
        return pltpu.InterpretParams()
    return interpret


def compiler_params(strategy: str, dimension_semantics: tuple[str, ...], num_warps: int = 4, num_stages: int = 1):
    if strategy == "tpu":
        return pltpu.CompilerParams(dimension_semantics=dimension_semantics)
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def dot(a, b, acc_dtype, precision: str = "highest"):
    """``a @ b`` with ``acc_dtype`` accumulation; ``precision`` a key of :data:`PRECISIONS`."""
    return jax.lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())), precision=PRECISIONS[precision],
                               preferred_element_type=acc_dtype)


@dataclasses.dataclass(frozen=True)
class Options:
    """Static (hashable) kernel options carried through ``custom_vjp`` as a non-differentiable argument."""

    strategy: str = "auto"
    interpret: Any = None
    block: int | None = None  # kernel-specific tile (chunk_state: Dv tile; cache_read: query block)
    block_v: int | None = None  # cache_read: Dv tile (gpu strategy)
    num_warps: int = 4
    num_stages: int = 1
    precision: str = "highest"  # in-kernel matmuls (chunk_state), see PRECISIONS
