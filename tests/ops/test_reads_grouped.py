"""ssc's grouped read (``mc_jax.ops.reads_grouped``) against the definition ``y_t = sum_i gamma_ti S_i^T q_t``.

The weights are ssc's own (``agg.weights`` over logits from ``u`` and the pooled keys), so the gradients reach the
logits through the top-k softmax. Shapes are chosen so that tiles hold several states, a state spans several tiles,
tokens see fewer states than ``top_k`` (the first segments) or none, ``top_k`` reaches ``N``, and the rows do not fill
the last tile. A property test routes arbitrary rows (ties, empty tokens) and checks the read and its gradients.
"""

from __future__ import annotations

import functools
from functools import partial

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from mc_jax.ops import aggregation as agg
from mc_jax.ops.reads_grouped import grouped_read
from tests.helpers.tolerances import assert_close, check_read

B, H, DK, DV = 2, 3, 4, 3


def _inputs(t: int, size: int, dtype, seed=0):
    keys = iter(jax.random.split(jax.random.key(seed), 6))
    normal = lambda shape: jax.random.normal(next(keys), shape, dtype)
    n = t // size
    return dict(stack=normal((B, n, H, DK, DV)), q=normal((B, t, H, DK)), u=normal((B, t, H, DK)),
                keys=normal((B, n, H, DK)), on=normal((B, t, H)))


def _weights(a, size: int, top_k: int):
    t, n = a["q"].shape[1], a["keys"].shape[1]
    visible = jnp.arange(n)[None, :] < (jnp.arange(t) // size)[:, None]
    available = jnp.broadcast_to(visible[None, :, None], (B, t, H, n))
    logits = jnp.einsum("bthd,bnhd->bthn", a["u"], a["keys"])
    gamma, gamma_on = agg.weights("ssc", logits, a["on"], available, top_k)
    return gamma, available, gamma_on


def _definition(stack, gamma, available, q):
    return jnp.einsum("bthn,bthk,bnhkv->bthv", jnp.where(available, gamma, 0.0), q, stack)


def _pair(size: int, top_k: int, rows: int):
    def grouped(a):
        gamma, available, gamma_on = _weights(a, size, top_k)
        return grouped_read(a["stack"], gamma, available, a["q"], top_k=top_k, rows=rows), gamma_on

    def reference(a):
        gamma, available, gamma_on = _weights(a, size, top_k)
        return _definition(a["stack"], gamma, available, a["q"]), gamma_on

    return grouped, reference


# (t, segment size, top_k, rows): one row per tile; tiles of several states; a state over several tiles; rows that
# do not fill the last tile (3 * 2 * 7 = 42 rows in tiles of 8); top_k = N (every visible state, no selection).
SHAPES = [(16, 2, 1, 1), (16, 2, 2, 4), (18, 3, 2, 8), (21, 3, 2, 5), (12, 2, 6, 2)]


@pytest.mark.parametrize("t,size,top_k,rows", SHAPES)
def test_equals_definition(x64, t, size, top_k, rows):
    a = _inputs(t, size, jnp.float64, seed=t + rows)
    check_read(*_pair(size, top_k, rows), a, "float64")


def test_float32():
    a = _inputs(18, 3, jnp.float32, seed=3)
    check_read(*_pair(3, 2, 4), a, "float32")


def test_a_non_finite_state_reaches_only_the_tokens_that_chose_it(x64):
    """Rows of other states share its tiles; they stay finite forward and backward (selects, not zero weights)."""
    size, top_k = 2, 1
    a = _inputs(16, size, jnp.float64, seed=7)
    a["stack"] = a["stack"].at[:, 2].set(jnp.inf)
    gamma, available, _ = _weights(a, size, top_k)
    chose = np.asarray(gamma[..., 2] != 0)  # b t h
    assert chose.any() and (~chose[:, 2 * size:]).any()  # some tokens that see it chose others
    read = lambda q: grouped_read(a["stack"], gamma, available, q, top_k=top_k, rows=4)
    y = np.asarray(read(a["q"]))
    assert not np.isfinite(y[chose]).any() and np.isfinite(y[~chose]).all()
    dq = np.asarray(jax.grad(lambda q: jnp.sum(read(q)))(a["q"]))
    assert np.isfinite(dq[~chose]).all()


_ROUTING_T, _ROUTING_N = 10, 5


@functools.cache
def _routing_checks(top_k: int, rows: int):
    """Jitted ``(value, gradients)`` of the grouped read and of the definition under a fixed cotangent."""
    def loss(read):
        return lambda s, g, a, x, ct: jnp.sum(ct * read(s, g, a, x))
    grouped = partial(grouped_read, top_k=top_k, rows=rows)
    return tuple(jax.jit(jax.value_and_grad(loss(f), (0, 1, 3))) for f in (grouped, _definition))


@pytest.mark.parametrize("top_k,rows", [(1, 1), (2, 3), (3, 4)])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_any_routing(top_k, rows, seed):
    """Arbitrary weights with at most ``top_k`` nonzero per token (ties, tokens with none, unavailable states):
    the read and the gradients of the stack, the weights and the queries equal the definition."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        t, n = _ROUTING_T, _ROUTING_N
        choice = rng.random((1, t, 2, n)).argsort(-1) < rng.integers(0, top_k + 1, (1, t, 2, 1))
        gamma = jnp.asarray(np.where(choice, rng.choice([0.5, 1.0, -2.0], (1, t, 2, n)), 0.0))
        available = jnp.asarray(choice | (rng.random((1, t, 2, n)) < 0.5))
        stack, q = jnp.asarray(rng.normal(size=(1, n, 2, 3, 2))), jnp.asarray(rng.normal(size=(1, t, 2, 3)))
        ct = jnp.asarray(rng.normal(size=(1, t, 2, 2)))
        fast, slow = (f(stack, gamma, available, q, ct) for f in _routing_checks(top_k, rows))
        assert_close(fast[0], slow[0], "float64", "y")
        for name, x, e in zip(("dstack", "dgamma", "dq"), fast[1], slow[1]):
            e = jnp.where(gamma != 0, e, 0.0) if name == "dgamma" else e  # a zero weight's gradient is dropped
            assert_close(x, e, "float64", name)
