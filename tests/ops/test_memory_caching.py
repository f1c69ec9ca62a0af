"""Memory Caching against its definition (``impl="naive"``, float64): parallel form, streaming form, caches.

Configurations follow a Latin-square cover of memory x aggregation x (segmentation, init): every memory meets
every aggregation and every (segmentation, init) pair, and every aggregation meets every (segmentation, init)
pair -- all 16 MC variants and all 5 memories in 20 configurations (the full 80 compile for too long on CI).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mc_jax.ops import init_cache, memory_caching
from tests.helpers.op_inputs import AGGREGATION_NAMES, MEMORY_NAMES, make_inputs, mc_kwargs, slice_time
from tests.helpers.tolerances import assert_close, assert_rms_close

LAYOUTS = [("constant", "independent"), ("constant", "checkpoint"), ("log", "independent"), ("log", "checkpoint")]
COVER = [(m, a, LAYOUTS[(i + j) % 4]) for i, m in enumerate(MEMORY_NAMES) for j, a in enumerate(AGGREGATION_NAMES)]
ids = lambda c: f"{c[0]}-{c[1]}-{c[2][0]}-{c[2][1]}"


def _call(inputs, config, **extra):
    memory, aggregation, (segmentation, init) = config
    return memory_caching(**inputs, **mc_kwargs(memory, aggregation, segmentation, init), **extra)


# Split-invariance configurations: every memory, aggregation, segmentation and init at least once.
SPLIT = [("linear", "grm", ("log", "checkpoint")), ("gated_linear", "ssc", ("constant", "checkpoint")),
         ("delta", "soup", ("log", "independent")), ("dla", "residual", ("constant", "independent")),
         ("titans", "ssc", ("log", "independent")), ("titans", "soup", ("constant", "checkpoint"))]


@pytest.mark.parametrize("config", COVER, ids=ids)
def test_parallel_and_stream_equal_definition(x64, config):
    inputs = make_inputs(config[0], length=19)
    expected = _call(inputs, config, impl="naive")
    assert_close(_call(inputs, config, impl="xla"), expected, "float64", "parallel")
    y, cache = _call(inputs, config, return_cache=True)
    assert_close(y, expected, "float64", "stream")
    assert int(cache.position) == 19


@pytest.mark.parametrize("config", SPLIT, ids=ids)
def test_two_calls_passing_the_cache_equal_one(config):
    """Split mid-segment (and mid inner chunk): the second call continues from the first call's cache."""
    memory, aggregation, (segmentation, init) = config
    inputs = make_inputs(memory, length=19, dtype=jnp.float32)
    expected = _call(inputs, config)
    cache = init_cache(2, 2, 8, inputs["v"].shape[-1], max_len=19, memory=memory, segmentation=segmentation,
                       segment_size=4, init=init, chunk_size=2, params=inputs["params"])
    y1, cache = _call(slice_time(inputs, 0, 7), config, cache=cache, return_cache=True)
    y2, cache = _call(slice_time(inputs, 7, 19), config, cache=cache, return_cache=True)
    assert_close(jnp.concatenate([y1, y2], 1), expected, "float32", "split")
    assert int(cache.position) == 19


def _loss(config, impl="xla", stream=False):
    def loss(args, cotangent):
        if stream:
            y, _ = _call(args, config, return_cache=True)
        else:
            y = _call(args, config, impl=impl)
        return jnp.sum(cotangent * y)

    return loss


@pytest.mark.parametrize("config", COVER, ids=ids)
def test_gradients_equal_definition(x64, config):
    """Gradients of every input (q, k, v, u, every gate, the initial memory), parallel and stream forms.

    The fast form runs as ``jit(vmap(grad))`` over two examples (the same inputs with two cotangents), so every
    configuration is also checked to compose with jit, grad and vmap.
    """
    inputs = make_inputs(config[0], batch=1, length=11)
    cotangent = jax.random.normal(jax.random.key(7), inputs["v"].shape, inputs["v"].dtype)
    cotangents = jnp.stack([cotangent, -2.0 * cotangent])  # gradients are linear in the cotangent
    reference = jax.grad(_loss(config, "naive"))(inputs, cotangent)
    expected = [reference, jax.tree.map(lambda g: -2.0 * g, reference)]
    forms = {"parallel": _loss(config)}
    if config in SPLIT[:2] + SPLIT[-2:]:
        forms["stream"] = _loss(config, stream=True)
    for form, loss in forms.items():
        batched = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(inputs, cotangents)
        for i in range(2):
            got = jax.tree.map(lambda x: x[i], batched)
            _assert_grads(got, expected[i], config, form)


def _assert_grads(got, expected, config, form):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected)):
        name = jax.tree_util.keystr(path)
        assert jnp.any(b != 0) or config[1] == "residual" and "'u'" in name, f"zero gradient {name}"
        assert_close(a, b, "float64", f"{form} d{name}")


@pytest.mark.parametrize("memory", MEMORY_NAMES)
def test_float32_matches_float64_definition(memory):
    config = (memory, "grm", ("constant", "independent"))
    inputs = make_inputs(memory, length=19, dtype=jnp.float32)
    y = _call(inputs, config)
    assert y.dtype == jnp.float32
    with jax.enable_x64(True):
        expected = _call(jax.tree.map(lambda x: x.astype(jnp.float64), inputs), config, impl="naive")
    assert_close(y, expected, "float32")


@pytest.mark.parametrize("memory", ["delta", "dla"])
def test_bf16_inputs_accumulate_in_float32(memory):
    """bf16 inputs: states and reads in float32; outputs and gradients within the bf16 RMS tolerances."""
    config = (memory, "grm", ("constant", "independent"))
    inputs = make_inputs(memory, batch=1, length=11, dtype=jnp.bfloat16)
    reference = jax.tree.map(lambda x: x.astype(jnp.float32), inputs)
    y = _call(inputs, config)
    assert y.dtype == jnp.bfloat16
    assert_rms_close(y, _call(reference, config), "bf16_outputs")
    grad = lambda args: jax.grad(lambda a: jnp.sum(_call(a, config).astype(jnp.float32) ** 2))(args)
    for a, b in zip(jax.tree.leaves(grad(inputs)), jax.tree.leaves(grad(reference))):
        assert_rms_close(a, b, "bf16_grads")


@pytest.mark.parametrize("config", [("delta", "ssc", ("log", "independent")),
                                    ("titans", "soup", ("constant", "checkpoint"))],
                         ids=ids)
def test_token_by_token_decoding_equals_parallel(config):
    memory, aggregation, (segmentation, init) = config
    inputs = make_inputs(memory, batch=1, length=14, dtype=jnp.float32)
    expected = _call(inputs, config)
    cache = init_cache(1, 2, 8, inputs["v"].shape[-1], max_len=14, memory=memory, segmentation=segmentation,
                       segment_size=4, init=init, chunk_size=2, params=inputs["params"])
    step = jax.jit(lambda token, cache: _call(token, config, cache=cache, return_cache=True))
    outs = []
    for t in range(14):
        y, cache = step(slice_time(inputs, t, t + 1), cache)
        outs.append(y)
    assert_close(jnp.concatenate(outs, 1), expected, "float32")
