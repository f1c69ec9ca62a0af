"""Shared helpers for the kernel tests: inputs (from tests/ops/op_inputs.py), interpreters, comparisons."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

from mc_jax.ops.memories import complete_gates, get_memory
from tests.ops.op_inputs import make_inputs
from tests.tolerances import assert_close, assert_rms_close

# The TPU-semantics interpreter: NaN-filled scratch/outputs (a missed init shows up), race detection, and a random
# order of "parallel" grid axes (a carry wrongly on a parallel axis fails).
TPU_INTERPRET = pltpu.InterpretParams(uninitialized_memory="nan", detect_races=True, random_seed=7)


def linear_inputs(memory: str, *, batch=2, length=24, heads=2, dk=8, dv=16, dtype=jnp.float32, seed=0):
    """``(q, k, v, gates, state)`` for a linear-family memory; gates completed as the op sees them."""
    inp = make_inputs(memory, batch=batch, length=length, heads=heads, dk=dk, dv=dv, dtype=dtype, seed=seed)
    gates = complete_gates(get_memory(memory), inp["gates"], (batch, length, heads))
    return inp["q"], inp["k"], inp["v"], gates, inp["params"].astype(jnp.float32)


def compare(actual, expected, dtype: str, name: str) -> None:
    """fp32: elementwise table tolerance; bf16 inputs: relative RMS (``bf16_outputs`` / ``bf16_grads``)."""
    for i, (a, e) in enumerate(zip(jax.tree.leaves(actual), jax.tree.leaves(expected))):
        if dtype == "float32":
            assert_close(a, e, "float32", f"{name}[{i}]")
        else:
            assert_rms_close(a, e, dtype, f"{name}[{i}]")


def weighted_sum(tree, seed: int = 1):
    """A scalar loss with random cotangents for every leaf (all outputs get distinct, nonzero gradients)."""
    leaves = jax.tree.leaves(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return sum(jnp.sum(x.astype(jnp.float32) * jax.random.normal(k, x.shape)) for k, x in zip(keys, leaves))


def value_and_vjp(kernel, op, *args):
    """``(kernel(*args), op(*args), kernel's vjp, op's vjp)`` with the same random cotangents (call under jit)."""
    out, vjp = jax.vjp(kernel, *args)
    ref, vjp_ref = jax.vjp(op, *args)
    cts = jax.grad(weighted_sum)(ref)
    return out, ref, vjp(cts), vjp_ref(cts)
