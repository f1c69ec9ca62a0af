"""The visible-state reads of ``mc_jax.ops.reads_causal`` against the dense read with weights computed up front.

The reference is the dense path of the parallel form (``agg.weights`` over every token x segment, then
``reads.dense_mix``), itself tested against the per-token definition (log segmentation's per-level reads:
``test_log_levels``). Shapes are chosen so that there are several query blocks (the triangular loop), blocks that
see nothing, a ragged diagonal, and ssc blocks that gather fewer states than exist. Outputs and gradients of every
input, float64 and float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mc_jax.ops import aggregation as agg
from mc_jax.ops.memories import get_memory
from mc_jax.ops.reads import dense_mix
from mc_jax.ops.reads_causal import causal_read, residual_prefix_read, sparse_read, weighted_read
from tests.helpers.tolerances import assert_close, check_read

B, H, DK, DV, F = 2, 2, 4, 3, 5
SIZE, N = 2, 8  # 8 segments of 2 tokens


def _inputs(family: str, dtype, seed=0, what="read"):
    keys = iter(jax.random.split(jax.random.key(seed), 8))
    normal = lambda shape: jax.random.normal(next(keys), shape, dtype)
    t, d = N * SIZE, DK
    if family == "linear":
        stack, x = normal((B, N, H, DK, DV)), normal((B, t, H, DK))
    else:
        stack = {"W1": 0.5 * normal((B, N, H, d, F)), "W2": 0.5 * normal((B, N, H, F, d))}
        x = normal((B, t, H, F if what == "W1" else d))  # W1 maps the hidden layer
    return dict(stack=stack, x=x, u=normal((B, t, H, DK)), keys=normal((B, N, H, DK)), on=normal((B, t, H)))


def _weights(aggregation, top_k, a):
    """``(gamma, available)`` ``[b t h n]`` of the whole-sequence form (token t sees segments i < t // SIZE)."""
    t = a["x"].shape[1]
    available = jnp.broadcast_to((jnp.arange(N)[None, :] < (jnp.arange(t) // SIZE)[:, None])[None, :, None],
                                 (B, t, H, N))
    logits = None if aggregation == "residual" else jnp.einsum("bthd,bnhd->bthn", a["u"], a["keys"])
    gamma, gamma_on = agg.weights(aggregation, logits, a["on"], available, top_k)
    return gamma, available, gamma_on


def _reference(spec, what, aggregation, top_k, a):
    gamma, available, gamma_on = _weights(aggregation, top_k, a)
    return dense_mix(spec, what, a["stack"], gamma, a["x"], SIZE, available), gamma_on


def _causal(spec, what, aggregation, top_k, a, block):
    gamma, available, gamma_on = _weights(aggregation, top_k, a)
    return causal_read(spec, what, a["stack"], gamma, available, a["x"], size=SIZE, block=block), gamma_on


def _sparse(spec, what, top_k, a, block):
    gamma, available, gamma_on = _weights("ssc", top_k, a)
    return sparse_read(spec, what, a["stack"], gamma, available, a["x"], top_k=top_k, block=block), gamma_on




CASES = [("linear", "read", "grm"), ("linear", "read", "residual"), ("linear", "read", "ssc"),
         ("deep", "read", "grm"), ("deep", "W2", "soup"), ("deep", "W1", "soup"), ("deep", "read", "residual")]


@pytest.mark.parametrize("family,what,aggregation", CASES)
@pytest.mark.parametrize("block", [2, 4])  # one segment per query block (the first sees nothing), two (ragged)
def test_causal_read_equals_dense(x64, family, what, aggregation, block):
    spec = get_memory("linear" if family == "linear" else "dla")
    a = _inputs(family, jnp.float64, what=what)
    top_k = 2 if aggregation == "ssc" else None
    check_read(lambda a: _causal(spec, what, aggregation, top_k, a, block),
           lambda a: _reference(spec, what, aggregation, top_k, a), a, "float64")


@pytest.mark.parametrize("family,what", [("linear", "read"), ("deep", "read"), ("deep", "W1")])
@pytest.mark.parametrize("top_k,block", [(1, 2), (2, 1), (1, 1)])
def test_sparse_read_equals_dense(x64, family, what, top_k, block):
    spec = get_memory("linear" if family == "linear" else "titans")
    a = _inputs(family, jnp.float64, seed=1, what=what)
    check_read(lambda a: _sparse(spec, what, top_k, a, block),
           lambda a: _reference(spec, what, "ssc", top_k, a), a, "float64")


def test_float32():
    spec = get_memory("linear")
    a = _inputs("linear", jnp.float32, seed=2)
    check_read(lambda a: _causal(spec, "read", "grm", None, a, 4), lambda a: _reference(spec, "read", "grm", None, a),
           a, "float32")
    check_read(lambda a: _sparse(spec, "read", 1, a, 2), lambda a: _reference(spec, "read", "ssc", 1, a), a, "float32")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("segments", [N, N - 1])  # the associative scan's even and odd lengths
def test_residual_prefix_read(x64, dtype, segments):
    spec = get_memory("linear")
    a = _inputs("linear", jnp.dtype(dtype), seed=3)
    a["stack"], a["x"] = a["stack"][:, :segments], a["x"][:, : segments * SIZE]
    def reference(a):
        gamma, available = _residual_weights(a)
        return (dense_mix(spec, "read", a["stack"], gamma, a["x"], SIZE, available),)

    fast = lambda a: (residual_prefix_read(a["stack"], a["x"], SIZE),)
    check_read(fast, reference, a, dtype)


def _residual_weights(a):
    """``(gamma, available)`` of residual over the stack and tokens of ``a`` (any number of segments)."""
    n, t = a["stack"].shape[1], a["x"].shape[1]
    available = jnp.broadcast_to((jnp.arange(n)[None, :] < (jnp.arange(t) // SIZE)[:, None])[None, :, None],
                                 (B, t, H, n))
    return agg.weights("residual", None, a["on"][:, :t], available, None)[0], available


def test_residual_prefix_read_non_finite_state_does_not_leak(x64):
    """A non-finite state reaches only the tokens of the segments after it (the scan adds, never multiplies by 0)."""
    a = _inputs("linear", jnp.float64, seed=7)
    stack = a["stack"].at[:, N - 3].set(jnp.inf)  # read by the last two segments only
    y = np.asarray(residual_prefix_read(stack, a["x"], SIZE))
    assert np.isfinite(y[:, : (N - 2) * SIZE]).all()
    assert not np.isfinite(y[:, (N - 2) * SIZE:]).all()


def test_weighted_read_vjp(x64):
    """The hand-written VJP equals autodiff of the plain read (weights with exact zeros included)."""
    keys = jax.random.split(jax.random.key(5), 4)
    q, s = jax.random.normal(keys[0], (B, H, 6, DK)), jax.random.normal(keys[1], (B, H, 4, DK, DV))
    gamma = jnp.where(jax.random.bernoulli(keys[2], 0.7, (B, H, 6, 4)), jax.random.normal(keys[3], (B, H, 6, 4)), 0)
    plain = lambda q, g, s: jnp.einsum("bhcm,bhck,bhmkv->bhcv", g, q, s)
    ct = jax.random.normal(keys[0], (B, H, 6, DV))
    y, vjp = jax.vjp(weighted_read, q, gamma, s)
    y_ref, vjp_ref = jax.vjp(plain, q, gamma, s)
    assert_close(y, y_ref, "float64", "y")
    (dq, dg, ds), (dq_ref, dg_ref, ds_ref) = vjp(ct), vjp_ref(ct)
    assert_close(dq, dq_ref, "float64", "dq")
    assert_close(ds, ds_ref, "float64", "dstates")
    assert_close(jnp.where(gamma != 0, dg, 0), jnp.where(gamma != 0, dg_ref, 0), "float64", "dgamma")


def test_invisible_non_finite_state_does_not_leak(x64):
    """A non-finite state is read only by the tokens that can see it: the rest of its query block stays finite."""
    spec = get_memory("linear")
    a = _inputs("linear", jnp.float64, seed=6)
    a["stack"] = a["stack"].at[:, N - 2].set(jnp.inf)  # visible to the last segment only
    y = _causal(spec, "read", "grm", None, a, 4)[0]
    assert np.isfinite(np.asarray(y[:, : (N - 1) * SIZE])).all()
