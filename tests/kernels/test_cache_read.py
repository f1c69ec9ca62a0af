"""The cached-memory read kernels against ``reads.dense_mix`` (interpret mode on CPU; lowering for cuda / tpu)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mc_jax.kernels.cache_read import dense_mix, reference, slot_indices, sparse_mix
from mc_jax.ops import aggregation as agg
from mc_jax.ops import reads
from mc_jax.ops.memories import get_memory
from tests.helpers.kernel_inputs import TPU_INTERPRET, compare, naive_cache_read, value_and_vjp

SPEC = get_memory("delta")  # any linear-family memory: the read is q^T S
BLOCK = 8


def _inputs(*, b=1, t=24, h=2, m=5, dk=8, dv=4, top_k=None, dtype=jnp.float32, seed=0, block_routing=False):
    """A causal setting: a token of block j sees slots < j + 2. ``block_routing``: one router logit per block."""
    keys = jax.random.split(jax.random.key(seed), 4)
    stack = jax.random.normal(keys[0], (b, m, h, dk, dv)) * 0.3
    x = jax.random.normal(keys[1], (b, t, h, dk))
    logits = jax.random.normal(keys[2], (b, t, h, m))
    if block_routing:
        logits = jnp.repeat(logits[:, ::BLOCK], BLOCK, axis=1)[:, :t]
    seg = jnp.arange(t) // BLOCK
    available = jnp.broadcast_to((jnp.arange(m) < seg[:, None] + 2)[None, :, None], (b, t, h, m))
    gamma, _ = agg.weights("ssc" if top_k else "grm", logits, logits[..., 0], available, top_k)
    return stack.astype(dtype), gamma.astype(jnp.float32), x.astype(dtype)


@pytest.mark.parametrize("strategy,interpret", [("gpu", True), ("tpu", TPU_INTERPRET)], ids=["gpu", "tpu"])
def test_dense_fp32(strategy, interpret):
    stack, gamma, x = _inputs()
    kernel = lambda s, g, x: dense_mix(SPEC, "read", s, g, x, 12, strategy=strategy, interpret=interpret,
                                       block_q=BLOCK)
    op = naive_cache_read  # the definition (the kernel's backward is the vjp of reads.dense_mix)
    out, ref, grads, grads_ref = jax.jit(lambda *a: value_and_vjp(kernel, op, *a))(stack, gamma, x)
    compare(out, ref, "float32", "y")
    compare(grads, grads_ref, "float32", "grads")


def test_dense_bf16_inputs():
    """bf16 states and queries, fp32 accumulation, vs the op on the same values in fp32."""
    stack, gamma, x = _inputs(dtype=jnp.bfloat16, t=20, m=3, dk=16, dv=8)  # T not a multiple of 8: block_q = 10
    kernel = lambda s, g, x: dense_mix(SPEC, "read", s, g, x, 10, strategy="gpu", interpret=True)
    op = lambda s, g, x: reads.dense_mix(SPEC, "read", s.astype(jnp.float32), g, x.astype(jnp.float32), 10)
    out, ref, grads, grads_ref = jax.jit(lambda *a: value_and_vjp(kernel, op, *a))(stack, gamma, x)
    compare(out, ref, "bf16_outputs", "y")
    compare(grads, grads_ref, "bf16_grads", "grads")


@pytest.mark.parametrize("strategy,interpret", [("gpu", True), ("tpu", TPU_INTERPRET)], ids=["gpu", "tpu"])
def test_sparse_topk(strategy, interpret):
    """SSC weights routed per query block: k = top_k listed slots of M = 5 make the sparse read exact."""
    top_k = 2
    stack, gamma, x = _inputs(top_k=top_k, m=5, block_routing=True)
    idx = slot_indices(gamma, BLOCK, top_k)
    kernel = lambda s, g, x: sparse_mix(s, g, x, idx, block_q=BLOCK, strategy=strategy, interpret=interpret)
    # gradients: those of the definition on gamma restricted to the listed slots (unlisted slots do not enter the
    # read)
    op = lambda s, g, x: naive_cache_read(s, reference.selected_gamma(g, idx, BLOCK), x)
    out, ref, grads, grads_ref = jax.jit(lambda *a: value_and_vjp(kernel, op, *a))(stack, gamma, x)
    compare(out, ref, "float32", "y")
    compare(out, reads.dense_mix(SPEC, "read", stack, gamma, x, BLOCK), "float32", "y vs dense op")
    compare(grads, grads_ref, "float32", "grads")


def test_wide_states_are_tiled_by_columns():
    """States wider than 64 run in 32-column tiles on the gpu strategy (3 tiles of Dv = 96): dense and sparse."""
    from mc_jax.kernels.cache_read.config import gpu_block_v

    assert gpu_block_v(64, 64) == (64, 4) and gpu_block_v(72, 96) == (32, 8)
    stack, gamma, x = _inputs(t=16, m=3, dk=72, dv=96, top_k=2, block_routing=True)
    op = lambda s, g, x: reads.dense_mix(SPEC, "read", s, g, x, 16)
    dense = lambda s, g, x: dense_mix(SPEC, "read", s, g, x, 16, strategy="gpu", interpret=True, block_q=BLOCK)
    out, ref, grads, grads_ref = jax.jit(lambda *a: value_and_vjp(dense, op, *a))(stack, gamma, x)
    compare(out, ref, "float32", "dense y")
    compare(grads, grads_ref, "float32", "dense grads")
    idx = slot_indices(gamma, BLOCK, 2)
    sparse = jax.jit(lambda: sparse_mix(stack, gamma, x, idx, block_q=BLOCK, strategy="gpu", interpret=True))()
    compare(sparse, ref, "float32", "sparse y")


def test_sparse_reads_only_listed_slots():
    """With fewer listed slots than used, the kernel equals the op on gamma restricted to the listed slots."""
    stack, gamma, x = _inputs(top_k=2, m=5)
    idx = slot_indices(gamma, BLOCK, 2)
    out = jax.jit(lambda: sparse_mix(stack, gamma, x, idx, block_q=BLOCK, strategy="gpu", interpret=True))()
    compare(out, reference.sparse_mix(stack, gamma, x, idx, BLOCK), "float32", "y")


def test_validation():
    stack, gamma, x = _inputs()
    with pytest.raises(ValueError, match="block_q"):
        dense_mix(SPEC, "read", stack, gamma, x, 12, block_q=5)
    with pytest.raises(ValueError, match="multiple of 8"):
        dense_mix(SPEC, "read", stack, gamma, x, 12, block_q=12, strategy="tpu")
    with pytest.raises(ValueError, match="slot_idx"):
        sparse_mix(stack, gamma, x, jnp.zeros((1, 2, 3), jnp.int32), block_q=BLOCK)
    with pytest.raises(ValueError, match="capacity"):
        slot_indices(gamma, BLOCK, 6)


@pytest.mark.parametrize("strategy,platform", [("gpu", "cuda"), ("tpu", "tpu")])
def test_lowering(strategy, platform):
    b, t, h, m, dk, dv, bq = 1, 512, 2, 8, 64, 128, 128
    stack, x, gamma = jnp.zeros((b, m, h, dk, dv)), jnp.zeros((b, t, h, dk)), jnp.zeros((b, t, h, m))
    idx = jnp.zeros((b, h, t // bq, 2), jnp.int32)
    marker = "__gpu$xla.gpu.triton" if platform == "cuda" else "tpu_custom_call"
    for f in (lambda s, g, x: dense_mix(SPEC, "read", s, g, x, bq, strategy=strategy, interpret=False, block_q=bq),
              lambda s, g, x: sparse_mix(s, g, x, idx, block_q=bq, strategy=strategy, interpret=False)):
        assert marker in jax.jit(f).trace(stack, gamma, x).lower(lowering_platforms=(platform,)).as_text()
        grad = jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2))
        jax.jit(grad).trace(stack, gamma, x).lower(lowering_platforms=(platform,))


def test_block_sizes_validation_and_defaults():
    from mc_jax.kernels.cache_read import BlockSizes

    with pytest.raises(ValueError, match="block_q must be a positive int"):
        BlockSizes(block_q=0)
    with pytest.raises(ValueError, match="positive divisor of T=24"):
        BlockSizes(block_q=5).resolve(24, 8, 8, "gpu")
    with pytest.raises(ValueError, match="multiple of 8"):
        BlockSizes(block_q=4).resolve(24, 8, 8, "tpu")
    with pytest.raises(ValueError, match="must divide Dv=96"):
        BlockSizes(block_v=64).resolve(16, 72, 96, "gpu")
    assert BlockSizes().resolve(2048, 128, 128, "gpu") == (128, 32, 8, 1)
    assert BlockSizes().resolve(2048, 64, 64, "gpu") == (128, 64, 4, 1)
    assert BlockSizes().resolve(2048, 128, 128, "tpu") == (128, 128, 4, 1)
    stack, gamma, x = _inputs()
    with pytest.raises(ValueError, match="disagrees"):
        dense_mix(SPEC, "read", stack, gamma, x, 12, block_q=8, block_sizes=BlockSizes(block_q=4))
    # an explicit tiling (2 columns of Dv = 4, 2 warps) gives the same read
    tiled = jax.jit(lambda: dense_mix(SPEC, "read", stack, gamma, x, 12, strategy="gpu", interpret=True,
                                      block_sizes=BlockSizes(block_q=8, block_v=2, num_warps=2)))()
    compare(tiled, reads.dense_mix(SPEC, "read", stack, gamma, x, 12), "float32", "tiled y")
