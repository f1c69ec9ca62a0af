"""The one-token decode step (``mc_jax.ops.decode``) against the definition: outputs and gradients, token by token.

``memory_caching`` with one token and a cache takes the decode step; these tests feed a whole sequence one token at
a time (after an optional prefix through the chunked streaming form) into a cache with spare capacity, so the
bucketed read of the filled slots crosses several bucket widths, ssc gathers fewer slots than are filled, and deep
memories cross inner-chunk boundaries mid-segment.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mc_jax.ops import init_cache, memory_caching
from mc_jax.ops.decode import slot_buckets
from tests.helpers.op_inputs import AGGREGATION_NAMES, MEMORY_NAMES, make_inputs, mc_kwargs, slice_time
from tests.helpers.tolerances import assert_close

LAYOUTS = [("constant", "independent"), ("constant", "checkpoint"), ("log", "independent"), ("log", "checkpoint")]
COVER = [(m, a, LAYOUTS[(i + j) % 4]) for i, m in enumerate(MEMORY_NAMES) for j, a in enumerate(AGGREGATION_NAMES)]
# every memory, aggregation, segmentation and init at least once
GRADS = [("linear", "grm", ("constant", "independent")), ("gated_linear", "ssc", ("constant", "checkpoint")),
         ("delta", "soup", ("log", "independent")), ("dla", "residual", ("log", "checkpoint")),
         ("titans", "ssc", ("constant", "independent")), ("titans", "soup", ("constant", "checkpoint"))]
ids = lambda c: f"{c[0]}-{c[1]}-{c[2][0]}-{c[2][1]}"
LENGTH = 13


def _decode_all(inputs, config, prefix=0, max_len=3 * LENGTH):
    """Outputs of ``prefix`` tokens through the streaming form, then one token per call."""
    memory, aggregation, (segmentation, init) = config
    kw = mc_kwargs(memory, aggregation, segmentation, init)
    b, t, h, dk = inputs["q"].shape
    cache = init_cache(b, h, dk, inputs["v"].shape[-1], max_len=max_len, memory=memory, segmentation=segmentation,
                       segment_size=kw["segment_size"], init=init, chunk_size=kw["chunk_size"],
                       params=inputs["params"])
    ys = []
    if prefix:
        y, cache = memory_caching(**slice_time(inputs, 0, prefix), cache=cache, return_cache=True, **kw)
        ys.append(y)
    for i in range(prefix, t):
        y, cache = memory_caching(**slice_time(inputs, i, i + 1), cache=cache, return_cache=True, **kw)
        ys.append(y)
    return jnp.concatenate(ys, axis=1), cache


def _naive(inputs, config):
    memory, aggregation, (segmentation, init) = config
    return memory_caching(**inputs, **mc_kwargs(memory, aggregation, segmentation, init), impl="naive")


def test_slot_buckets():
    assert slot_buckets(1) == (0, 1)
    assert slot_buckets(4) == (0, 1, 2, 4)
    assert slot_buckets(10) == (0, 1, 2, 4, 8, 10)


@pytest.mark.parametrize("config", COVER, ids=ids)
def test_decode_equals_definition(x64, config):
    inputs = make_inputs(config[0], length=LENGTH)
    y, cache = _decode_all(inputs, config, prefix=3 if config[1] == "grm" else 0)
    assert_close(y, _naive(inputs, config), "float64", "decode")
    assert int(cache.position) == LENGTH


@pytest.mark.parametrize("config", GRADS[:3], ids=ids)
def test_decode_float32(config):
    inputs = make_inputs(config[0], length=LENGTH, dtype=jnp.float32)
    expected = memory_caching(**inputs, **mc_kwargs(config[0], config[1], *config[2]), impl="xla")
    assert_close(_decode_all(inputs, config)[0], expected, "float32", "decode f32")


@pytest.mark.parametrize("config", GRADS, ids=ids)
def test_decode_gradients_equal_definition(x64, config):
    """Gradients of every input (q, k, v, u, every gate, the initial memory) through a token-by-token decode."""
    inputs = make_inputs(config[0], batch=1, length=9)
    cotangent = jax.random.normal(jax.random.key(3), inputs["v"].shape, inputs["v"].dtype)
    expected = jax.grad(lambda a: jnp.sum(cotangent * _naive(a, config)))(inputs)
    actual = jax.grad(lambda a: jnp.sum(cotangent * _decode_all(a, config, max_len=20)[0]))(inputs)
    jax.tree_util.tree_map_with_path(lambda p, a, e: assert_close(a, e, "float64", jax.tree_util.keystr(p)),
                                     actual, expected)


def test_decode_cost_follows_filled_slots():
    """A step reads the smallest power-of-two bucket of filled slots: a cache with 8x the capacity (more buckets,
    most slots empty) gives the same result."""
    config = ("linear", "grm", ("constant", "independent"))
    inputs = make_inputs("linear", length=LENGTH, dtype=jnp.float32)
    small, _ = _decode_all(inputs, config, max_len=LENGTH)
    large, _ = _decode_all(inputs, config, max_len=8 * LENGTH)
    assert_close(small, large, "float32", "capacity")
