"""Shared helpers for the kernel tests: inputs (from op_inputs), interpreters, comparisons, and the kernels' ops
written by the per-token definition (:mod:`mc_jax.ops.naive`), so that outputs *and gradients* of a kernel are
checked against something other than the XLA reference its backward pass differentiates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

from mc_jax.ops import naive
from mc_jax.ops.memories import complete_gates, get_memory
from tests.helpers.op_inputs import make_inputs
from tests.helpers.tolerances import assert_close, assert_rms_close

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


def naive_state_pass(k, v, gates, state, chunk: int):
    """``(starts [r n h dk dv], u [r n h c dv], final [r h dk dv])`` of a linear memory, token by token.

    States by :func:`mc_jax.ops.naive.memory_step` (the definition); the effective values are the chunk form's
    ``u_t = b_t (v_t - e^{g_t} S_{t-1}^T k_t)`` (``u_t = v_t`` without the delta rule) from those states.
    """
    spec = get_memory("delta" if "beta" in gates else "gated_linear")
    r, t, h, _ = k.shape
    gates = {name: gates[name] for name in ("log_decay", "beta") if name in gates}
    s, starts, us = state.astype(jnp.float32), [], []
    for i in range(t):
        if i % chunk == 0:
            starts.append(s)
        g = {name: x[:, i].astype(jnp.float32) for name, x in gates.items()}
        k_i, v_i = k[:, i].astype(jnp.float32), v[:, i].astype(jnp.float32)
        if "beta" in g:
            decayed = jnp.exp(g["log_decay"])[..., None] * jnp.einsum("rhkv,rhk->rhv", s, k_i)
            us.append(g["beta"][..., None] * (v_i - decayed))
        else:
            us.append(v_i)
        s = naive.memory_step(spec, s, k_i, v_i, g, False)
    u = jnp.stack(us, 1).reshape(r, t // chunk, chunk, h, -1)
    return jnp.stack(starts, 1), jnp.moveaxis(u, 2, 3), s


def naive_cache_read(stack, gamma, x):
    """``y[t] = sum_m gamma[t, m] read(S_m, x_t)`` with the definition's read (:func:`mc_jax.ops.naive.read`).

    stack ``[b m h dk dv]``, gamma ``[b t h m]``, x ``[b t h dk]`` -> ``[b t h dv]``.
    """
    spec = get_memory("linear")
    rows = []
    for i in range(x.shape[1]):
        reads = [gamma[:, i, :, j, None] * naive.read(spec, stack[:, j], x[:, i]) for j in range(stack.shape[1])]
        rows.append(sum(reads[1:], reads[0]))
    return jnp.stack(rows, 1)
