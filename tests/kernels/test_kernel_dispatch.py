"""``memory_caching(impl="pallas")`` (kernels in interpret mode on CPU) equals the XLA form end to end."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mc_jax.dispatch import KERNELS, resolve_impl
from mc_jax.dispatch.policy import ALGORITHMS
from mc_jax.ops import memory_caching
from mc_jax.ops.memories import get_memory
from tests.helpers.op_inputs import make_inputs, mc_kwargs
from tests.helpers.tolerances import assert_close

# (memory, aggregation, segmentation, init, segment_size): ssc with 2-token segments takes the sparse read (a block
# of 2 queries x top_k=1 < 19 cached states); with 8-token segments it takes the dense read kernel.
CONFIGS = [("delta", "grm", "constant", "independent", 8), ("gated_linear", "ssc", "constant", "checkpoint", 8),
           ("delta", "ssc", "constant", "independent", 2), ("linear", "residual", "log", "independent", 8)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_pallas_equals_xla_outputs_and_gradients(config):
    memory, aggregation, segmentation, init, segment_size = config
    inputs = make_inputs(memory, length=37, dtype=jnp.float32)
    kw = mc_kwargs(memory, aggregation, segmentation, init, segment_size=segment_size,
                   chunk_size=min(4, segment_size), top_k=1)
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


def test_auto_uses_no_kernel_on_cpu_and_pallas_uses_all():
    linear, deep = get_memory("delta"), get_memory("titans")
    assert resolve_impl("auto", linear, streaming=False) == ALGORITHMS  # no kernel: this suite runs on CPU
    assert resolve_impl("xla", linear, streaming=False) == frozenset()
    assert resolve_impl("pallas", linear, streaming=False) == KERNELS
    with pytest.warns(UserWarning, match="streaming form"):
        assert resolve_impl("pallas", linear, streaming=True) == frozenset()
    assert resolve_impl("pallas", deep, streaming=False) == frozenset()  # (its warning is emitted once per process)


def test_auto_on_gpu_uses_the_sparse_read_only_up_to_the_measured_head_dim(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    linear = get_memory("gated_linear")
    assert resolve_impl("auto", linear, streaming=False, head_dim=64) == {"cache_read_sparse"} | ALGORITHMS
    assert resolve_impl("auto", linear, streaming=False, head_dim=128) == ALGORITHMS
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert resolve_impl("auto", linear, streaming=False, head_dim=128) == KERNELS | ALGORITHMS
