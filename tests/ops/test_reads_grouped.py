"""ssc without ``[b, t, h, n]`` weights (``mc_jax.ops.reads_grouped``) against the definition.

``topk_gated_read`` (the per-block top-k choice, the softmax over the chosen logits, the grouped read) against ssc's
dense weights (``agg.weights``) and the read ``y_t = g_on y_on + sum_i g_ti S_i^T q_t``: outputs and gradients of
every input (q, u, the online logit and read-out, the pooled keys, the states), float64 and float32. Shapes are
chosen so that tiles hold several states, a state spans several tiles, tokens see fewer states than ``top_k`` or
none, ``top_k`` reaches ``N``, the rows do not fill the last tile, and there are several query blocks. A property
test routes arbitrary rows through ``read_chosen`` (repeated states, empty slots).
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
from mc_jax.ops.reads_grouped import read_chosen, topk_gated_read
from tests.helpers.tolerances import assert_close, check_read

B, H, DK, DV = 2, 3, 4, 3


def _inputs(t: int, size: int, dtype, seed=0):
    keys = iter(jax.random.split(jax.random.key(seed), 6))
    normal = lambda shape: jax.random.normal(next(keys), shape, dtype)
    n = t // size
    return dict(q=normal((B, t, H, DK)), u=normal((B, t, H, DK)), on=normal((B, t, H)), y_on=normal((B, t, H, DV)),
                pooled=normal((B, n, H, DK)), stack=normal((B, n, H, DK, DV)))


def _definition(a, size: int, top_k: int):
    """ssc's dense weights over every visible state, then the dense read."""
    t, n = a["q"].shape[1], a["pooled"].shape[1]
    visible = jnp.arange(n)[None, :] < (jnp.arange(t) // size)[:, None]
    available = jnp.broadcast_to(visible[None, :, None], (B, t, H, n))
    logits = jnp.einsum("bthd,bnhd->bthn", a["u"], a["pooled"])
    gamma, gamma_on = agg.weights("ssc", logits, a["on"], available, top_k)
    return (gamma_on[..., None] * a["y_on"] + jnp.einsum("bthn,bthk,bnhkv->bthv", gamma, a["q"], a["stack"]),)


def _fused(a, size: int, top_k: int, block: int, rows: int):
    return (topk_gated_read(a["q"], a["u"], a["on"], a["y_on"], a["pooled"], a["stack"], size=size, top_k=top_k,
                            block=block, rows=rows),)


# (t, segment size, top_k, query block, rows): one row per tile; tiles of several states; a state over several
# tiles; rows that do not fill the last tile (3 * 2 * 7 = 42 rows in tiles of 8 / 5); top_k = N; one query block.
SHAPES = [(16, 2, 1, 4, 1), (16, 2, 2, 8, 4), (18, 3, 2, 6, 8), (21, 3, 2, 7, 5), (12, 2, 6, 12, 2)]


@pytest.mark.parametrize("t,size,top_k,block,rows", SHAPES)
def test_equals_definition(x64, t, size, top_k, block, rows):
    a = _inputs(t, size, jnp.float64, seed=t + rows)
    check_read(partial(_fused, size=size, top_k=top_k, block=block, rows=rows),
               partial(_definition, size=size, top_k=top_k), a, "float64")


def test_float32():
    a = _inputs(18, 3, jnp.float32, seed=3)
    check_read(partial(_fused, size=3, top_k=2, block=6, rows=4), partial(_definition, size=3, top_k=2), a,
               "float32")


def test_a_non_finite_state_reaches_only_the_tokens_that_chose_it(x64):
    """Rows of other states share its tiles; they stay finite forward and backward (selects, not zero weights)."""
    size, top_k = 2, 1
    a = _inputs(16, size, jnp.float64, seed=7)
    a["stack"] = a["stack"].at[:, 2].set(jnp.inf)
    logits = np.asarray(jnp.einsum("bthd,bnhd->bthn", a["u"], a["pooled"]))
    sees = np.arange(8)[None, :] < (np.arange(16) // size)[:, None]
    chose = (np.where(sees[None, :, None], logits, -np.inf).argmax(-1) == 2) & sees[None, :, None, 2]  # b t h
    assert chose.any() and (~chose[:, 3 * size:]).any()  # some tokens that see it chose another state
    read = lambda q: _fused(dict(a, q=q), size, top_k, 8, 4)[0]
    y = np.asarray(read(a["q"]))
    assert not np.isfinite(y[chose]).any() and np.isfinite(y[~chose]).all()
    dq = np.asarray(jax.grad(lambda q: jnp.sum(read(q)))(a["q"]))
    assert np.isfinite(dq[~chose]).all()


_ROUTING_T, _ROUTING_N, _ROUTING_C = 10, 5, 3


@functools.cache
def _routing_checks(rows: int):
    """Jitted ``(value, gradients)`` of ``read_chosen`` and of the dense definition under a fixed cotangent."""
    def dense(stack, choice, weight, q):
        onehot = jax.nn.one_hot(choice, _ROUTING_N, dtype=weight.dtype)  # b t h c n
        return jnp.einsum("bthc,bthcn,bthk,bnhkv->bthv", weight, onehot, q, stack)

    loss = lambda read: lambda s, c, w, x, ct: jnp.sum(ct * read(s, c, w, x))
    return tuple(jax.jit(jax.value_and_grad(loss(f), (0, 2, 3)))
                 for f in (partial(read_chosen, rows=rows), dense))


@pytest.mark.parametrize("rows", [1, 3, 4])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_any_routing(rows, seed):
    """Arbitrary choices (a state chosen twice by one token, empty slots of weight 0, every token on one state):
    the read and the gradients of the stack, the weights and the queries equal the dense definition."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        t, n, c = _ROUTING_T, _ROUTING_N, _ROUTING_C
        choice = jnp.asarray(rng.integers(0, rng.integers(1, n + 1), (1, t, 2, c)))
        weight = jnp.asarray(np.where(rng.random((1, t, 2, c)) < 0.3, 0.0, rng.normal(size=(1, t, 2, c))))
        stack, q = jnp.asarray(rng.normal(size=(1, n, 2, 3, 2))), jnp.asarray(rng.normal(size=(1, t, 2, 3)))
        ct = jnp.asarray(rng.normal(size=(1, t, 2, 2)))
        fast, slow = (f(stack, choice, weight, q, ct) for f in _routing_checks(rows))
        assert_close(fast[0], slow[0], "float64", "y")
        for name, x, e in zip(("dstack", "dweight", "dq"), fast[1], slow[1]):
            e = jnp.where(weight != 0, e, 0.0) if name == "dweight" else e  # a zero weight's slot is dropped
            assert_close(x, e, "float64", name)
