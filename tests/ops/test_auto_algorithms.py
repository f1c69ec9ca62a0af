"""``impl="auto"``'s exact XLA algorithms (visible-state reads of ``mc_jax.ops.reads_causal`` as read-stage entries of
``mc_jax.dispatch.TABLE``) against the definition, outputs and gradients of every input, whole-sequence form.

Segments of 2 tokens make many segments at tiny lengths, so the causal read has several query blocks, the ssc gather
pays (``2 * bq * top_k < N``) and residual takes the prefix-sum read; every memory meets every aggregation and every
(segmentation, init) pair (a Latin-square cover as ``test_memory_caching``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mc_jax.dispatch import resolve_impl
from mc_jax.ops import memory_caching, reads_causal, reads_grouped
from mc_jax.ops.memories import get_memory
from tests.helpers.op_inputs import AGGREGATION_NAMES, MEMORY_NAMES, make_inputs, mc_kwargs
from tests.helpers.tolerances import assert_close

LAYOUTS = [("constant", "independent"), ("constant", "checkpoint"), ("log", "independent"), ("log", "checkpoint")]
COVER = [(m, a, LAYOUTS[(i + j) % 4]) for i, m in enumerate(MEMORY_NAMES) for j, a in enumerate(AGGREGATION_NAMES)]
# gradients: every memory, aggregation, segmentation and init at least once (the naive gradients are slow)
GRADS = [("linear", "grm", LAYOUTS[0]), ("linear", "residual", LAYOUTS[2]), ("gated_linear", "ssc", LAYOUTS[1]),
         ("delta", "residual", LAYOUTS[0]), ("dla", "soup", LAYOUTS[0]), ("titans", "ssc", LAYOUTS[0]),
         ("titans", "grm", LAYOUTS[3]), ("gated_linear", "residual", LAYOUTS[1])]  # the prefix read, checkpoint
ids = lambda c: f"{c[0]}-{c[1]}-{c[2][0]}-{c[2][1]}"


def _call(inputs, config, impl, top_k=2):
    memory, aggregation, (segmentation, init) = config
    kw = mc_kwargs(memory, aggregation, segmentation, init, segment_size=2, chunk_size=2, top_k=top_k)
    return memory_caching(**inputs, **kw, impl=impl)


def test_auto_enables_the_algorithms():
    names = resolve_impl("auto", get_memory("linear"), streaming=False, head_dim=64)
    assert {"residual_prefix", "topk_gated_read", "sparse_gather", "causal_read", "blocked_residual"} <= names
    assert not resolve_impl("xla", get_memory("linear"), streaming=False)
    assert "causal_read" not in resolve_impl("auto", get_memory("linear"), streaming=True)


@pytest.mark.parametrize("memory,reads", [("gated_linear", (1, 0)), ("delta", (1, 0)), ("titans", (0, 1))])
def test_ssc_takes_the_grouped_read_for_matrix_memories_and_the_gather_for_deep_ones(monkeypatch, memory, reads):
    """At the shapes of the tests above, so that they check the grouped read and the gather against the definition
    (swla: ``tests/ops/test_swla.py``)."""
    calls = {"grouped": 0, "gather": 0}

    def spy(name, fn):
        def counted(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return counted

    monkeypatch.setattr(reads_grouped, "read_chosen", spy("grouped", reads_grouped.read_chosen))
    monkeypatch.setattr(reads_causal, "sparse_read", spy("gather", reads_causal.sparse_read))
    for length, top_k in ((19, 2), (11, 1)):
        _call(make_inputs(memory, batch=1, length=length), (memory, "ssc", LAYOUTS[1]), "auto", top_k=top_k)
        assert (calls["grouped"], calls["gather"]) == reads, calls
        calls.update(grouped=0, gather=0)


@pytest.mark.parametrize("config", COVER, ids=ids)
def test_auto_equals_definition(x64, config):
    inputs = make_inputs(config[0], length=19)
    assert_close(_call(inputs, config, "auto"), _call(inputs, config, "naive"), "float64", "auto")


@pytest.mark.parametrize("config", COVER[::3], ids=ids)
def test_auto_float32(config):
    inputs = make_inputs(config[0], length=19, dtype=jnp.float32)
    assert_close(_call(inputs, config, "auto"), _call(inputs, config, "xla"), "float32", "auto vs xla")


@pytest.mark.parametrize("config", GRADS, ids=ids)
def test_auto_gradients_equal_definition(x64, config):
    """Gradients of q, k, v, u, every gate and the initial memory (ssc with top_k = 1 so that the gather pays)."""
    inputs = make_inputs(config[0], batch=1, length=11)
    cotangent = jax.random.normal(jax.random.key(11), inputs["v"].shape, inputs["v"].dtype)
    grad = lambda impl: jax.grad(lambda a: jnp.sum(cotangent * _call(a, config, impl, top_k=1)))(inputs)
    jax.tree_util.tree_map_with_path(lambda p, x, e: assert_close(x, e, "float64", jax.tree_util.keystr(p)),
                                     grad("auto"), grad("naive"))
