"""The JAX port of the PyTorch reference (``benchmarks/jax_reference.py``) equals mc_jax in float64.

Outputs and the gradients of q, k, v, u and the initial state, for grm and residual, both inits, at the awkward
shapes of tests/benchmarks/test_torch_reference.py. ``bench_torch`` times this port to tell a gap of mc_jax's
algorithms from a gap of the backend; that reading holds only if the port computes the same thing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from benchmarks import jax_reference as reference
from mc_jax.ops import memory_caching
from tests.helpers.op_inputs import make_inputs
from tests.helpers.tolerances import assert_close

# (T, C, Dk, Dv, initial state): ragged last segment; C > T (one online segment); C = 1; segments that tile T
SHAPES = [(11, 3, 5, 3, True), (5, 8, 4, 4, False), (6, 1, 3, 4, True), (12, 4, 4, 6, False)]


@pytest.mark.parametrize("init", ["independent", "checkpoint"])
@pytest.mark.parametrize("aggregation", ["grm", "residual"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"T{s[0]}C{s[1]}" for s in SHAPES])
def test_jax_reference_equals_mc_jax(x64, aggregation, init, shape):
    length, c, dk, dv, with_state = shape
    a = make_inputs("linear", batch=2, length=length, heads=2, dk=dk, dv=dv, seed=length + c,
                    initial_state=with_state)
    names = ["q", "k", "v"] + (["u"] if aggregation == "grm" else []) + (["params"] if with_state else [])
    ct = jax.random.normal(jax.random.key(7), (2, length, 2, dv), jnp.float64)
    kw = dict(aggregation=aggregation, segment_size=c, init=init)

    def loss(fn):
        def value(args):
            full = {"u": None, "params": None, **args}
            y = fn(full)
            return jnp.sum(ct * y), y
        return jax.jit(jax.value_and_grad(value, has_aux=True))

    mc = lambda f: memory_caching(f["q"], f["k"], f["v"], u=f["u"], params=f["params"], memory="linear", impl="xla",
                                  **kw)
    port = lambda f: reference.memory_caching_linear(f["q"], f["k"], f["v"], f["u"], s0=f["params"], **kw)
    args = {n: a[n] for n in names}
    (_, y_mc), g_mc = loss(mc)(args)
    (_, y_port), g_port = loss(port)(args)
    assert y_port.dtype == jnp.float64
    assert_close(y_port, y_mc, "float64", "y")
    for n in names:
        assert_close(g_port[n], g_mc[n], "float64", f"d{n}")


def test_jax_reference_rejects_bad_input():
    q = jnp.zeros((1, 4, 1, 2))
    with pytest.raises(ValueError, match="aggregation / init / pool"):
        reference.memory_caching_linear(q, q, q, q, aggregation="soup", segment_size=2)
