"""Identities of Memory Caching (DESIGN.md 3.3) and properties of the parallel / streaming forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mc_jax.ops import init_cache, memory_caching
from tests.helpers.op_inputs import make_inputs, mc_kwargs, slice_time
from tests.helpers.tolerances import assert_close


@pytest.mark.parametrize("segmentation", ["constant", "log"])
def test_residual_independent_linear_is_linear_attention(x64, segmentation):
    """The cached segments and the online one partition the prefix, so their reads sum to linear attention."""
    inputs = make_inputs("linear", length=37, initial_state=False)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    expected = jnp.einsum("bthd,bjhd,tj,bjhv->bthv", q, k, jnp.tri(37), v)
    y = memory_caching(q, k, v, segmentation=segmentation, segment_size=5)
    assert_close(y, expected, "float64")


@pytest.mark.parametrize("memory", ["linear", "gated_linear", "delta"])
@pytest.mark.parametrize("segmentation", ["constant", "log"])
def test_soup_equals_grm_for_linear_memories(x64, memory, segmentation):
    inputs = make_inputs(memory, length=23)
    grm = memory_caching(**inputs, **mc_kwargs(memory, "grm", segmentation))
    soup = memory_caching(**inputs, **mc_kwargs(memory, "soup", segmentation))
    assert_close(soup, grm, "float64")


@pytest.mark.parametrize("memory", ["dla", "titans"])
def test_soup_differs_from_grm_for_deep_memories(x64, memory):
    inputs = make_inputs(memory, length=23)
    grm = memory_caching(**inputs, **mc_kwargs(memory, "grm"))
    soup = memory_caching(**inputs, **mc_kwargs(memory, "soup"))
    assert_close(soup[:, :4], grm[:, :4], "float64")  # first segment: only the online memory, gamma_on = 1
    assert float(jnp.max(jnp.abs(soup - grm))) > 1e-3


@pytest.mark.parametrize("memory,segmentation", [("delta", "constant"), ("titans", "log")])
def test_ssc_keeping_every_segment_is_grm(x64, memory, segmentation):
    inputs = make_inputs(memory, length=23)
    grm = memory_caching(**inputs, **mc_kwargs(memory, "grm", segmentation))
    ssc = memory_caching(**inputs, **mc_kwargs(memory, "ssc", segmentation, top_k=6))  # >= 5 cached segments
    assert_close(ssc, grm, "float64")
    ssc1 = memory_caching(**inputs, **mc_kwargs(memory, "ssc", segmentation, top_k=1))
    assert float(jnp.max(jnp.abs(ssc1 - grm))) > 1e-3  # with fewer kept, it is a different model


@pytest.mark.parametrize("aggregation", ["residual", "grm", "soup", "ssc"])
@pytest.mark.parametrize("memory", ["delta", "titans"])
def test_one_segment_is_the_base_memory(x64, memory, aggregation):
    inputs = make_inputs(memory, length=13)
    base = memory_caching(**inputs, memory=memory, segment_size=16, chunk_size=2)
    top_k = 1 if aggregation == "ssc" else None
    y = memory_caching(**inputs, memory=memory, aggregation=aggregation, segment_size=16, chunk_size=2, top_k=top_k)
    assert_close(y, base, "float64")


@pytest.mark.parametrize("pool", ["mean", "sum"])
def test_pooling_changes_only_the_gates(x64, pool):
    inputs = make_inputs("gated_linear", length=13)
    y = memory_caching(**inputs, **mc_kwargs("gated_linear", "grm"), pool=pool)
    expected = memory_caching(**inputs, **mc_kwargs("gated_linear", "grm"), pool=pool, impl="naive")
    assert_close(y, expected, "float64")


def test_causal_appending_tokens_leaves_earlier_outputs_unchanged():
    inputs = make_inputs("delta", length=21, dtype=jnp.float32)
    config = mc_kwargs("delta", "grm", "log")
    full = memory_caching(**inputs, **config)
    prefix = memory_caching(**slice_time(inputs, 0, 13), **config, params=inputs["params"])
    assert_close(prefix, full[:, :13], "float32")


@settings(max_examples=4, deadline=None)
@given(split=st.integers(1, 16))
def test_split_anywhere_equals_one_call(split):
    inputs = make_inputs("gated_linear", batch=1, length=17, dtype=jnp.float32)
    config = mc_kwargs("gated_linear", "ssc", "constant", "checkpoint")
    expected = memory_caching(**inputs, **config)
    cache = init_cache(1, 2, 8, 6, max_len=17, memory="gated_linear", segment_size=4, chunk_size=2,
                       init="checkpoint", params=inputs["params"])
    y1, cache = memory_caching(**slice_time(inputs, 0, split), **config, cache=cache, return_cache=True)
    y2 = memory_caching(**slice_time(inputs, split, 17), **config, cache=cache)
    assert_close(jnp.concatenate([y1, y2], 1), expected, "float32")


def test_vmap_over_a_leading_axis_equals_a_loop():
    inputs = make_inputs("dla", batch=1, length=9, dtype=jnp.float32)
    config = mc_kwargs("dla", "soup", "log")
    stacked = jax.tree.map(lambda x: jnp.stack([x, 0.5 * x]), inputs)
    batched = jax.vmap(lambda a: memory_caching(**a, **config))(stacked)
    for i in range(2):
        single = memory_caching(**jax.tree.map(lambda x: x[i], stacked), **config)
        assert_close(batched[i], single, "float32")
