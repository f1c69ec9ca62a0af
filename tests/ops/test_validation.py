"""Bad arguments raise ValueError with a message that says what to change."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from mc_jax.ops import init_cache, memory_caching
from tests.helpers.op_inputs import make_inputs, slice_time


@pytest.fixture(scope="module")
def linear():
    return make_inputs("gated_linear", batch=1, length=6, dtype=jnp.float32)


@pytest.fixture(scope="module")
def deep():
    return make_inputs("titans", batch=1, length=6, dtype=jnp.float32)


def call(inputs, **kw):
    args = dict(inputs)
    args.update(kw)
    return memory_caching(args.pop("q"), args.pop("k"), args.pop("v"), **args)


@pytest.mark.parametrize("kw,match", [
    (dict(memory="lstm"), "unknown memory 'lstm'"),
    (dict(aggregation="mean"), "aggregation='mean' is not supported"),
    (dict(segmentation="dyadic"), "segmentation='dyadic'"),
    (dict(init="zeros"), "init='zeros'"),
    (dict(pool="max"), "pool='max'"),
    (dict(impl="cuda"), "impl='cuda'"),
    (dict(segment_size=0), "segment_size must be a positive int"),
    (dict(aggregation="ssc"), "needs top_k >= 1"),
    (dict(aggregation="ssc", top_k=0), "needs top_k >= 1"),
    (dict(top_k=2), "top_k is only used by aggregation='ssc'"),
    (dict(aggregation="grm", u=None), "needs u"),
    (dict(chunk_size=0), "chunk_size must be a positive int"),
])
def test_bad_options(linear, kw, match):
    with pytest.raises(ValueError, match=match):
        call(linear, **{"memory": "gated_linear", **kw})


def test_bad_shapes_and_gates(linear):
    with pytest.raises(ValueError, match="k must have the shape of q"):
        call(linear, memory="gated_linear", k=linear["k"][:, :5])
    with pytest.raises(ValueError, match=r"v must be \[B, T, H, Dv\]"):
        call(linear, memory="gated_linear", v=linear["v"][:, :, :1])
    with pytest.raises(ValueError, match=r"q must be \[B, T, H, D\]"):
        call(linear, memory="gated_linear", q=linear["q"][0])
    with pytest.raises(ValueError, match="u must have the shape of q"):
        call(linear, memory="gated_linear", aggregation="grm", u=linear["u"][..., :3])
    with pytest.raises(ValueError, match="floating-point"):
        call(linear, memory="gated_linear", q=jnp.ones(linear["q"].shape, jnp.int32))
    with pytest.raises(ValueError, match=r"needs gates \['log_decay'\]"):
        call(linear, memory="gated_linear", gates={})
    with pytest.raises(ValueError, match=r"does not use gates \['beta'\]"):
        call(linear, memory="gated_linear", gates={**linear["gates"], "beta": linear["gates"]["log_decay"]})
    with pytest.raises(ValueError, match="gate 'log_decay' has shape"):
        call(linear, memory="gated_linear", gates={"log_decay": linear["gates"]["log_decay"][:, :2]})
    with pytest.raises(ValueError, match=r"initial state \[B, H, Dk, Dv\]"):
        call(linear, memory="gated_linear", params=jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="sequence is empty"):
        call(slice_time(linear, 0, 0), memory="gated_linear")


def test_deep_memory_arguments(deep):
    with pytest.raises(ValueError, match="must be a multiple of chunk_size"):
        call(deep, memory="titans", segment_size=6, chunk_size=4)
    with pytest.raises(ValueError, match="needs params"):
        call(deep, memory="titans", params=None)
    with pytest.raises(ValueError, match="keys 'W1' and 'W2'"):
        call(deep, memory="titans", params={"W1": deep["params"]["W1"]})
    with pytest.raises(ValueError, match="Dk == Dv"):
        call(deep, memory="titans", v=deep["v"][..., :4])


def test_cache_misuse(linear):
    common = dict(memory="gated_linear", segment_size=2, chunk_size=2)
    cache = init_cache(1, 2, 8, 6, max_len=4, **common)
    linear = {**linear, "params": None}
    with pytest.raises(ValueError, match="cache has 2 slots but 6 tokens need 3"):
        call(linear, **common, cache=cache)
    with pytest.raises(ValueError, match="cache was built for"):
        call(linear, memory="gated_linear", segment_size=3, cache=cache)
    with pytest.raises(ValueError, match="impl='naive' is the per-token definition"):
        call(linear, **common, impl="naive", return_cache=True)
    with pytest.raises(ValueError, match="drop params"):
        call(slice_time(linear, 0, 2), **common, cache=cache, params=jnp.zeros((1, 2, 8, 6)))
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        init_cache(1, 2, 8, 6, max_len=0, **common)
