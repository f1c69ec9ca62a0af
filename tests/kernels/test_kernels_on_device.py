"""The kernels compiled natively on a GPU/TPU at real sizes (``-m device``; skipped on CPU, where CI runs).

Both sides multiply in full fp32 (``jax.default_matmul_precision("highest")``: on a GPU the XLA default allows TF32,
which the kernels never use), so the float32 rows of the shared tolerance table apply unchanged. Shapes include a
chunk count and a segment count that are not powers of two (Triton tiles must be, the kernels' loop axes need not).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mc_jax.kernels.cache_read import dense_mix, slot_indices, sparse_mix
from mc_jax.kernels.chunk_state import state_pass
from mc_jax.ops import memory_caching, reads
from mc_jax.ops.memories import linear
from tests.helpers.kernel_inputs import compare, linear_inputs, value_and_vjp
from tests.helpers.op_inputs import make_inputs, mc_kwargs
from tests.kernels.test_cache_read import SPEC
from tests.kernels.test_cache_read import _inputs as read_inputs

pytestmark = [
    pytest.mark.device,
    pytest.mark.skipif(jax.default_backend() == "cpu",
                       reason="needs a GPU/TPU: compiles and runs the kernels natively"),
]


@pytest.fixture(autouse=True)
def full_fp32():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.mark.parametrize("length", [2048, 1984])  # 32 and 31 chunks of 64
@pytest.mark.parametrize("memory", ["gated_linear", "delta"])
def test_chunk_state_outputs_and_gradients(memory, length):
    _, k, v, gates, state = linear_inputs(memory, batch=2, length=length, heads=4, dk=64, dv=128)
    kernel = lambda k, v, g, s: state_pass(k, v, g, s, 64)
    op = lambda k, v, g, s: linear.state_pass(k, v, g, s, 64)
    out, ref, grads, grads_ref = jax.jit(lambda *a: value_and_vjp(kernel, op, *a))(k, v, gates, state)
    compare(out, ref, "float32", f"{memory} starts/u/final")
    compare(grads, grads_ref, "float32", f"{memory} grads")


@pytest.mark.parametrize("memory", ["gated_linear", "delta"])
def test_chunk_state_bf16_inputs(memory):
    _, k, v, gates, state = linear_inputs(memory, batch=2, length=1024, heads=4, dk=64, dv=64, dtype=jnp.bfloat16)
    out = jax.jit(lambda *a: state_pass(*a, 64))(k, v, gates, state)
    ref = jax.jit(lambda *a: linear.state_pass(*a, 64))(k.astype(jnp.float32), v.astype(jnp.float32), gates, state)
    compare(out, ref, "bf16_outputs", f"{memory} bf16")


@pytest.mark.parametrize("slots", [16, 15])
def test_cache_read_dense_and_sparse(slots):
    stack, gamma, x = read_inputs(b=2, t=2048, h=4, m=slots, dk=64, dv=128, top_k=2)
    op = lambda s, g, x: reads.dense_mix(SPEC, "read", s, g, x, 128)
    dense = lambda s, g, x: dense_mix(SPEC, "read", s, g, x, 128, block_q=64)
    out, ref, grads, grads_ref = jax.jit(lambda *a: value_and_vjp(dense, op, *a))(stack, gamma, x)
    compare(out, ref, "float32", "dense")
    compare(grads, grads_ref, "float32", "dense grads")
    idx = slot_indices(gamma, 8, slots)
    sparse = lambda s, g, x: sparse_mix(s, g, x, idx, block_q=8)
    out, ref, grads, grads_ref = jax.jit(lambda *a: value_and_vjp(sparse, op, *a))(stack, gamma, x)
    compare(out, ref, "float32", "sparse")
    compare(grads, grads_ref, "float32", "sparse grads")


# (memory, aggregation, segmentation, init, segment_size); ssc with 16-token segments takes the sparse read.
CONFIGS = [("delta", "grm", "constant", "independent", 128), ("gated_linear", "ssc", "constant", "checkpoint", 128),
           ("gated_linear", "ssc", "constant", "independent", 16), ("linear", "residual", "log", "independent", 128),
           ("gated_linear", "soup", "constant", "independent", 128)]


@pytest.mark.parametrize("impl", ["pallas", "auto"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_memory_caching_pallas_equals_xla(config, impl):
    """The whole op at a real size with padding (T = 1000 is not a multiple of the 64-token chunk)."""
    memory, aggregation, segmentation, init, segment_size = config
    inputs = make_inputs(memory, batch=2, length=1000, heads=4, dk=64, dv=64, dtype=jnp.float32)
    kw = mc_kwargs(memory, aggregation, segmentation, init, segment_size=segment_size,
                   chunk_size=min(64, segment_size), top_k=2)
    loss = lambda args, impl: jnp.sum(memory_caching(**args, **kw, impl=impl) ** 2)
    run = jax.jit(lambda args, impl: (memory_caching(**args, **kw, impl=impl), jax.grad(loss)(args, impl)),
                  static_argnums=1)
    (y, grads), (y_ref, grads_ref) = run(inputs, impl), run(inputs, "xla")
    compare(y, y_ref, "float32", "y")
    compare(grads, grads_ref, "float32", "grads")
