"""The wide-matmul deep-memory read of ``mc_jax.ops.reads_deep`` against the dense masked read.

The reference is :func:`mc_jax.ops.reads.dense_mix` (every token x memory, unavailable ones selected away) with the
weights of the whole-sequence form, itself tested against the per-token definition (``test_oracles``). Shapes give
several query blocks, blocks that see nothing, one and several segments per block (ragged diagonals). Outputs and
gradients of every input (memories, queries, gate queries, keys, online logits), float64 and float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mc_jax.ops import aggregation as agg
from mc_jax.ops import memory_caching
from mc_jax.ops.memories import get_memory
from mc_jax.ops.reads import dense_mix
from mc_jax.ops.reads_deep import _mix, _mix_bwd, causal_deep_read
from tests.helpers.op_inputs import make_inputs, mc_kwargs
from tests.helpers.tolerances import assert_close, check_read

B, H, D, F = 2, 2, 4, 6
SIZE, N = 2, 8  # 8 segments of 2 tokens


def _inputs(dtype, seed=0):
    keys = iter(jax.random.split(jax.random.key(seed), 8))
    normal = lambda shape: jax.random.normal(next(keys), shape, dtype)
    t = N * SIZE
    stack = {"W1": 0.5 * normal((B, N, H, D, F)), "W2": 0.5 * normal((B, N, H, F, D))}
    return dict(stack=stack, x=normal((B, t, H, D)), u=normal((B, t, H, D)), keys=normal((B, N, H, D)),
                on=normal((B, t, H)))


def _weights(aggregation, top_k, a):
    t = a["x"].shape[1]
    available = jnp.broadcast_to((jnp.arange(N)[None, :] < (jnp.arange(t) // SIZE)[:, None])[None, :, None],
                                 (B, t, H, N))
    logits = None if aggregation == "residual" else jnp.einsum("bthd,bnhd->bthn", a["u"], a["keys"])
    gamma, gamma_on = agg.weights(aggregation, logits, a["on"], available, top_k)
    return gamma, available, gamma_on


def _fast(spec, aggregation, top_k, block):
    def run(a):
        gamma, available, gamma_on = _weights(aggregation, top_k, a)
        return causal_deep_read(spec, a["stack"], gamma, available, a["x"], size=SIZE, block=block), gamma_on
    return run


def _reference(spec, aggregation, top_k):
    def run(a):
        gamma, available, gamma_on = _weights(aggregation, top_k, a)
        return dense_mix(spec, "read", a["stack"], gamma, a["x"], SIZE, available), gamma_on
    return run




@pytest.mark.parametrize("memory,aggregation,block", [  # one, two, four segments per query block
    ("titans", "grm", 4), ("titans", "residual", 2), ("titans", "ssc", 8), ("dla", "grm", 2), ("dla", "grm", 8)])
def test_causal_deep_read_equals_dense(x64, memory, aggregation, block):
    spec = get_memory(memory)
    top_k = 2 if aggregation == "ssc" else None
    check_read(_fast(spec, aggregation, top_k, block), _reference(spec, aggregation, top_k), _inputs(jnp.float64),
           "float64")


def test_causal_deep_read_float32():
    spec = get_memory("titans")
    check_read(_fast(spec, "grm", None, 4), _reference(spec, "grm", None), _inputs(jnp.float32, seed=1), "float32")


def test_mix_bwd_equals_autodiff(x64):
    """The hand-written cotangents of the wide-matmul read equal autodiff of it (weights with exact zeros)."""
    keys = jax.random.split(jax.random.key(2), 6)
    c, m = 5, 3
    x, dy = jax.random.normal(keys[0], (B, H, c, D)), jax.random.normal(keys[1], (B, H, c, D))
    w2, w1 = jax.random.normal(keys[2], (B, H, m, F, D)), jax.random.normal(keys[3], (B, H, D, m, F))
    gamma = jnp.where(jax.random.bernoulli(keys[4], 0.7, (B, H, c, m)), jax.random.normal(keys[5], (B, H, c, m)), 0)
    _, vjp = jax.vjp(_mix, x, gamma, w2, w1)
    for name, got, expected in zip(("dx", "dgamma", "dw2", "dw1"), _mix_bwd(x, gamma, w2, w1, dy), vjp(dy)):
        assert_close(got, expected, "float64", name)


def test_invisible_non_finite_memory_does_not_leak(x64):
    """A non-finite memory on a block's diagonal reaches only the tokens that see it, forward and backward."""
    spec = get_memory("dla")
    a = _inputs(jnp.float64, seed=3)
    a["stack"] = jax.tree.map(lambda s: s.at[:, N - 2].set(jnp.inf), a["stack"])  # seen by the last segment only
    fast = _fast(spec, "grm", None, 4)
    y = jax.jit(fast)(a)[0]
    assert np.isfinite(np.asarray(y[:, : (N - 1) * SIZE])).all()
    assert not np.isfinite(np.asarray(y[:, (N - 1) * SIZE:])).all()
    # backward: the blocks before the one whose diagonal holds it (inside that block the masked dense read's
    # cotangent meets it as 0 * inf, as in dense_mix)
    dx = jax.jit(jax.grad(lambda x: jnp.sum(fast(dict(a, x=x))[0][:, : (N - 2) * SIZE])))(a["x"])
    assert np.isfinite(np.asarray(dx[:, : (N - 2) * SIZE])).all()


@pytest.mark.parametrize("memory,init", [("titans", "checkpoint"), ("dla", "independent")])
def test_whole_op_gradients_equal_definition(x64, memory, init):
    """``memory_caching(impl="auto")`` (which takes this read for deep grm, constant segments) against the per-token
    definition: outputs and gradients of q, k, v, u, every gate and the initial memory."""
    inputs = make_inputs(memory, batch=1, length=11)
    kw = mc_kwargs(memory, "grm", "constant", init, segment_size=2, chunk_size=2)
    call = lambda a, impl: memory_caching(**a, **kw, impl=impl)
    assert_close(call(inputs, "auto"), call(inputs, "naive"), "float64", "y")
    cotangent = jax.random.normal(jax.random.key(11), inputs["v"].shape, inputs["v"].dtype)
    grad = lambda impl: jax.grad(lambda a: jnp.sum(cotangent * call(a, impl)))(inputs)
    jax.tree_util.tree_map_with_path(lambda p, x, e: assert_close(x, e, "float64", jax.tree_util.keystr(p)),
                                     grad("auto"), grad("naive"))
