"""The ablation aggregations of the paper's Table 5: ``token`` (token-only gates) and ``uniform`` (frozen 1 / (n+1)).

The ladder of DESIGN.md section 6 for both: the per-token definition (``impl="naive"``) against an independent
closed form (linear memory, independent segments), then the parallel, streaming and one-token decode forms against
the definition in float64, gradients of every input, and float32 against float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mc_jax.ops import init_cache, memory_caching
from tests.helpers.op_inputs import MEMORY_NAMES, make_inputs, mc_kwargs, slice_time
from tests.helpers.tolerances import assert_close

LAYOUTS = [("constant", "independent"), ("constant", "checkpoint"), ("log", "independent"), ("log", "checkpoint")]
ABLATIONS = ("token", "uniform")
# every memory meets both ablations; every ablation meets every (segmentation, init) pair
COVER = [(m, a, LAYOUTS[(2 * i + j) % 4]) for i, m in enumerate(MEMORY_NAMES) for j, a in enumerate(ABLATIONS)]
ids = lambda c: f"{c[0]}-{c[1]}-{c[2][0]}-{c[2][1]}"


def _inputs(memory: str, aggregation: str, **kw) -> dict:
    """``make_inputs`` with the ablation's ``u``: ``[B, T, H, 1]`` token logits, or none for ``uniform``."""
    inputs = make_inputs(memory, **kw)
    inputs["u"] = 2.0 * inputs["u"][..., :1] if aggregation == "token" else None
    return inputs


def _call(inputs, config, **extra):
    memory, aggregation, (segmentation, init) = config
    return memory_caching(**inputs, **mc_kwargs(memory, aggregation, segmentation, init), **extra)


def _closed_form(q, k, v, z, size: int, aggregation: str):
    """Linear memory, independent constant segments: ``y_t = sum_{j <= t} G[t, j] (q_t . k_j) v_j`` with
    ``G[t, j]`` the weight of the segment of ``j`` (online: the segment of ``t``) -- numpy, per token."""
    q, k, v = (np.asarray(x) for x in (q, k, v))
    b, t, h, _ = q.shape
    y = np.zeros(v.shape)
    for i in range(t):
        n = i // size  # cached segments available to token i
        if aggregation == "uniform":
            on, cached = np.full((b, h), 1.0 / (n + 1)), np.full((b, h), 1.0 / (n + 1))
        else:
            e = np.exp(np.asarray(z)[:, i, :, 0])
            on, cached = e / (e + n), 1.0 / (e + n)
        for j in range(i + 1):
            g = on if j // size == n else cached
            y[:, i] += (g * np.einsum("bhd,bhd->bh", q[:, i], k[:, j]))[..., None] * v[:, j]
    return y


@pytest.mark.parametrize("aggregation", ABLATIONS)
def test_definition_equals_closed_form(x64, aggregation):
    inputs = _inputs("linear", aggregation, length=13, initial_state=False)
    y = memory_caching(**inputs, memory="linear", aggregation=aggregation, segment_size=4, impl="naive")
    expected = _closed_form(inputs["q"], inputs["k"], inputs["v"], inputs["u"], 4, aggregation)
    assert_close(y, expected, "float64", "naive vs closed form")


@pytest.mark.parametrize("config", COVER, ids=ids)
def test_parallel_stream_and_decode_equal_definition(x64, config):
    inputs = _inputs(config[0], config[1], length=13)
    expected = _call(inputs, config, impl="naive")
    assert_close(_call(inputs, config, impl="xla"), expected, "float64", "parallel")
    assert_close(_call(inputs, config, return_cache=True)[0], expected, "float64", "stream")
    memory, _, (segmentation, init) = config
    b, t, h, dk = inputs["q"].shape
    cache = init_cache(b, h, dk, inputs["v"].shape[-1], max_len=2 * t, memory=memory, segmentation=segmentation,
                       segment_size=4, init=init, chunk_size=2, params=inputs["params"])
    ys = []
    for i in range(t):  # one token per call: the decode step
        y, cache = _call(slice_time(inputs, i, i + 1), config, cache=cache, return_cache=True)
        ys.append(y)
    assert_close(jnp.concatenate(ys, 1), expected, "float64", "decode")


@pytest.mark.parametrize("config", COVER[::3], ids=ids)
def test_gradients_equal_definition(x64, config):
    """Gradients of every input (``u`` of the token gates included), parallel form, under jit."""
    inputs = _inputs(config[0], config[1], batch=1, length=11)
    cotangent = jax.random.normal(jax.random.key(5), inputs["v"].shape, inputs["v"].dtype)
    loss = lambda impl: lambda a: jnp.sum(cotangent * _call(a, config, impl=impl))
    expected = jax.grad(loss("naive"))(inputs)
    got = jax.jit(jax.grad(loss("xla")))(inputs)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected)):
        name = jax.tree_util.keystr(path)
        assert jnp.any(b != 0), f"zero gradient {name}"
        assert_close(a, b, "float64", f"d{name}")


@pytest.mark.parametrize("aggregation", ABLATIONS)
def test_float32_matches_float64_definition(aggregation):
    config = ("delta", aggregation, ("constant", "independent"))
    inputs = _inputs("delta", aggregation, length=19, dtype=jnp.float32)
    y = _call(inputs, config)
    with jax.enable_x64(True):
        expected = _call(jax.tree.map(lambda x: x.astype(jnp.float64), inputs), config, impl="naive")
    assert_close(y, expected, "float32")


def test_token_gates_at_zero_are_uniform(x64):
    inputs = _inputs("gated_linear", "token", length=19)
    zero = inputs | {"u": jnp.zeros_like(inputs["u"])}
    config = ("gated_linear", "token", ("log", "independent"))
    uniform = _call(inputs | {"u": None}, ("gated_linear", "uniform", ("log", "independent")))
    assert_close(_call(zero, config), uniform, "float64", "token(z = 0) vs uniform")


def test_uniform_is_residual_scaled(x64):
    """``uniform`` = ``residual`` / (n + 1): token ``t`` of constant segments of 4 reads ``n = t // 4`` caches."""
    inputs = _inputs("delta", "uniform", length=13)
    kw = mc_kwargs("delta", "uniform")
    residual = memory_caching(**inputs, **(kw | {"aggregation": "residual"}))
    n = jnp.arange(13) // 4
    assert_close(memory_caching(**inputs, **kw), residual / (n + 1.0)[None, :, None, None], "float64")


def test_token_gates_check_u():
    inputs = _inputs("linear", "token", length=5, dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"u \[B, T, H, 1\]"):
        memory_caching(**(inputs | {"u": None}), aggregation="token", segment_size=2)
    wide = make_inputs("linear", length=5, dtype=jnp.float32)["u"]
    with pytest.raises(ValueError, match="aggregation='token' takes u"):
        memory_caching(**(inputs | {"u": wide}), aggregation="token", segment_size=2)
