"""``memory_caching(impl="pallas")`` (kernels in interpret mode on CPU) equals the XLA form end to end."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mc_jax.ops import memory_caching
from op_inputs import make_inputs, mc_kwargs
from tolerances import assert_close

CONFIGS = [("delta", "grm", "constant", "independent"), ("gated_linear", "ssc", "constant", "checkpoint"),
           ("linear", "residual", "log", "independent")]


@pytest.mark.parametrize("config", CONFIGS, ids="-".join)
def test_pallas_equals_xla_outputs_and_gradients(config):
    memory, aggregation, segmentation, init = config
    inputs = make_inputs(memory, length=37, dtype=jnp.float32)
    kw = mc_kwargs(memory, aggregation, segmentation, init, segment_size=8, chunk_size=4, top_k=1)
    loss = lambda args, impl: jnp.sum(memory_caching(**args, **kw, impl=impl) ** 2)
    assert_close(memory_caching(**inputs, **kw, impl="pallas"), memory_caching(**inputs, **kw, impl="xla"), "float32")
    g_pallas, g_xla = jax.grad(loss)(inputs, "pallas"), jax.grad(loss)(inputs, "xla")
    for a, b in zip(jax.tree.leaves(g_pallas), jax.tree.leaves(g_xla)):
        assert_close(a, b, "float32")


def test_pallas_falls_back_to_xla_with_a_warning_for_deep_memories():
    inputs = make_inputs("dla", batch=1, length=8, dtype=jnp.float32)
    kw = mc_kwargs("dla", "grm")
    with pytest.warns(UserWarning, match="no kernel for deep memory 'dla'"):
        y = memory_caching(**inputs, **kw, impl="pallas")
    assert_close(y, memory_caching(**inputs, **kw, impl="xla"), "float32")
