"""The chunk-state kernel against the per-token definition and the XLA op (CPU: interpret mode; cuda / tpu:
lowering)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mc_jax.kernels.chunk_state import BlockSizes, reference, state_pass, state_pass_and_read
from mc_jax.ops.memories import linear
from mc_jax.ops.stages import pad_inputs
from tests.helpers.kernel_inputs import (
    TPU_INTERPRET,
    compare,
    linear_inputs,
    naive_state_pass,
    value_and_vjp,
    weighted_sum,
)

CHUNK = 8


def _check(memory, *, strategy, interpret, block_sizes=None):
    _, k, v, gates, state = linear_inputs(memory)
    kernel = lambda k, v, g, s: state_pass(k, v, g, s, CHUNK, strategy=strategy, interpret=interpret,
                                           block_sizes=block_sizes)
    # the per-token definition: the kernel's backward is the vjp of the XLA op, so comparing with that would not
    # test the gradients
    op = lambda k, v, g, s: naive_state_pass(k, v, g, s, CHUNK)
    out, ref, grads, grads_ref = jax.jit(lambda *a: value_and_vjp(kernel, op, *a))(k, v, gates, state)
    compare(out, ref, "float32", f"{memory} starts/u/final")
    compare(grads, grads_ref, "float32", f"{memory} grads")


@pytest.mark.parametrize("memory", ["gated_linear", "delta"])
def test_terms_reproduce_the_definition(memory):
    """The kernel's inputs (``chunk_terms``: decayed keys, the WY terms, chunk decays) scanned sequentially give the
    chunk-start states, effective values and final state of the token-by-token definition."""
    _, k, v, gates, state = linear_inputs(memory)
    got = jax.jit(lambda *a: reference.scan_terms(reference.chunk_terms(*a, CHUNK), state))(k, v, gates)
    compare(got, jax.jit(lambda *a: naive_state_pass(*a, state, CHUNK))(k, v, gates), "float32", "starts/u/final")


# ``linear`` is ``gated_linear`` with zero gates (same kernel path); block_v < Dv tiles the state columns.
@pytest.mark.parametrize("memory,block_v", [("gated_linear", 8), ("delta", None)])
def test_gpu_style_fp32(memory, block_v):
    _check(memory, strategy="gpu", interpret=True, block_sizes=BlockSizes(block_v=block_v))


@pytest.mark.parametrize("memory", ["delta"])
def test_tpu_style_tpu_interpreter(memory):
    """State in VMEM scratch over an "arbitrary" chunk axis, under NaN-filled memory and race detection."""
    _check(memory, strategy="tpu", interpret=TPU_INTERPRET)


def test_bf16_awkward_state_pass_and_read():
    """bf16 inputs, T = 37 (padded with identity steps to a multiple of the chunk), Dk != Dv, through the read."""
    memory, t = "delta", 37
    q, k, v, gates, state = linear_inputs(memory, length=t, dk=8, dv=4, dtype=jnp.bfloat16)

    def padded(fn):
        def run(q, k, v, gates, state):
            q, k, v, _, gates, valid = pad_inputs(q, k, v, None, gates, 40)
            return fn(q, k, v, gates, state, valid)
        return run

    def op(q, k, v, gates, state, valid):
        starts, u, final = linear.state_pass(k, v, gates, state, CHUNK, valid)
        return (starts, u), final, linear.read(q, k, gates, starts, u, CHUNK)

    kernel = lambda q, k, v, g, s, valid: state_pass_and_read(q, k, v, g, s, CHUNK, valid, strategy="gpu",
                                                                interpret=True)
    out, ref, grads, grads_ref = jax.jit(lambda *a: value_and_vjp(padded(kernel), padded(op), *a))(
        q, k, v, gates, state)
    compare(out, ref, "bf16_outputs", "outputs")
    compare(grads, grads_ref, "bf16_grads", "grads")


def test_block_sizes_validation():
    with pytest.raises(ValueError, match="block_v"):
        BlockSizes(block_v=0)
    with pytest.raises(ValueError, match="divide"):
        BlockSizes(block_v=24).resolve_block_v(64, "gpu")
    with pytest.raises(ValueError, match="multiple of 128"):
        BlockSizes(block_v=64).resolve_block_v(256, "tpu")
    assert BlockSizes.get_default(256, "tpu").resolve_block_v(256, "tpu") == 128
    assert BlockSizes.get_default(16, "tpu").resolve_block_v(16, "tpu") == 16
    with pytest.raises(ValueError, match="precision='tf32' is not supported"):
        BlockSizes(precision="tf32")
    # gpu: 32-column tiles (measured on an H100), the whole state when narrower; 8 warps from Dk = 128
    assert BlockSizes.get_default(64, "gpu", dk=64) == BlockSizes(block_v=32, num_warps=4)
    assert BlockSizes.get_default(128, "gpu", dk=128) == BlockSizes(block_v=32, num_warps=8)
    assert BlockSizes.get_default(16, "gpu").resolve_block_v(16, "gpu") == 16


@pytest.mark.parametrize("strategy,platform", [("gpu", "cuda"), ("tpu", "tpu")])
def test_lowering(strategy, platform):
    """Forward and backward lower to Triton (cuda) / Mosaic (tpu) at real tile sizes (lowering only, no compile)."""
    r, t, h, dk, dv = 1, 256, 2, 64, 128
    k, v = jnp.zeros((r, t, h, dk), jnp.bfloat16), jnp.zeros((r, t, h, dv), jnp.bfloat16)
    gates = {"log_decay": jnp.zeros((r, t, h)), "beta": jnp.zeros((r, t, h))}
    s = jnp.zeros((r, h, dk, dv))
    f = lambda k, v, g, s: state_pass(k, v, g, s, 64, strategy=strategy, interpret=False)
    text = jax.jit(f).trace(k, v, gates, s).lower(lowering_platforms=(platform,)).as_text()
    assert ("__gpu$xla.gpu.triton" if platform == "cuda" else "tpu_custom_call") in text
    grad = jax.grad(lambda *a: weighted_sum(f(*a)), argnums=(0, 1, 2, 3))
    jax.jit(grad).trace(k, v, gates, s).lower(lowering_platforms=(platform,))


def test_backend_precision_option():
    """``precision="default"`` (TF32 on NVIDIA GPUs) runs the same kernel; on CPU the products are exact fp32."""
    _check("delta", strategy="gpu", interpret=True, block_sizes=BlockSizes(precision="default"))
