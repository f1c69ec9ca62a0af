"""The fused weights + read of ``mc_jax.ops.reads_gated`` against the plain definition, and as ``impl="auto"``'s
``weights_read`` entry against the per-token definition (``impl="naive"``).

Function level: the softmax over the online logit and every visible ``<u_t, P_i>``, then ``sum_i g_i S_i^T q_t``,
written out over the whole ``[b, t, h, n]`` grid. Shapes: one segment per query block (the first sees nothing),
ragged blocks of two and three segments, one block for the whole sequence, no visible state (N = 0) and one (N = 1).
Op level: every matrix memory family, both inits, a length that is not a multiple of the block (padding), outputs
and gradients of every input (q, k, v, u, gates, initial memory); float64 to 1e-10, float32 to 1e-5.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mc_jax.dispatch import build_stages, resolve_impl
from mc_jax.dispatch.table import TABLE
from mc_jax.ops import memory_caching
from mc_jax.ops.memories import complete_gates, get_memory, initial_state
from mc_jax.ops.reads_gated import gated_read
from mc_jax.ops.sequence import mc_sequence
from tests.helpers.op_inputs import make_inputs, mc_kwargs
from tests.helpers.tolerances import assert_close

B, H, DK, DV = 1, 2, 4, 3


def _inputs(t: int, n: int, dtype, seed=0):
    keys = iter(jax.random.split(jax.random.key(seed), 8))
    normal = lambda shape: jax.random.normal(next(keys), shape, dtype)
    return dict(q=normal((B, t, H, DK)), u=normal((B, t, H, DK)), online_logit=normal((B, t, H)),
                y_online=normal((B, t, H, DV)),
                pooled=normal((B, n, H, DK)), states=normal((B, n, H, DK, DV)))


def _definition(a, size: int):
    """The whole grid: token t sees state i iff i < t // size; softmax over [online, visible states]."""
    t, n = a["q"].shape[1], a["pooled"].shape[1]
    visible = (jnp.arange(n)[None, :] < (jnp.arange(t) // size)[:, None])[None, :, None, :]  # 1 t 1 n
    logits = jnp.where(visible, jnp.einsum("bthk,bnhk->bthn", a["u"], a["pooled"]), -jnp.inf)
    g = jax.nn.softmax(jnp.concatenate([a["online_logit"][..., None], logits], -1), -1)
    reads = jnp.einsum("bthk,bnhkv->bthnv", a["q"], a["states"])
    return g[..., 0, None] * a["y_online"] + jnp.einsum("bthn,bthnv->bthv", g[..., 1:], reads)


def _check(fast, reference, a, dtype):
    y, y_ref = jax.jit(fast)(a), jax.jit(reference)(a)
    assert_close(y, y_ref, dtype, "y")
    ct = jax.random.normal(jax.random.key(7), y_ref.shape, y_ref.dtype)
    loss = lambda f: lambda args: jnp.sum(ct * f(args))
    grads, grads_ref = jax.jit(jax.grad(loss(fast)))(a), jax.jit(jax.grad(loss(reference)))(a)
    jax.tree_util.tree_map_with_path(lambda p, x, e: assert_close(x, e, dtype, "d" + jax.tree_util.keystr(p)),
                                     grads, grads_ref)


# (tokens, segment size, query block): 6 segments of 2 in blocks of 1, 2, 3 and 6 segments; 4 of 3 tokens in blocks
# of 2; one segment (no state visible, N = 0 readable); two segments in one block (N = 1)
SHAPES = [(12, 2, 2), (12, 2, 4), (12, 2, 6), (12, 2, 12), (12, 3, 6), (2, 2, 2), (4, 2, 4)]


@pytest.mark.parametrize("t,size,block", SHAPES)
def test_gated_read_equals_definition(x64, t, size, block):
    a = _inputs(t, t // size, jnp.float64)
    _check(lambda a: gated_read(**a, size=size, block=block), lambda a: _definition(a, size), a, "float64")


@pytest.mark.parametrize("t,size,block", SHAPES[1::3])
def test_gated_read_float32(t, size, block):
    a = _inputs(t, t // size, jnp.float32, seed=2)
    _check(lambda a: gated_read(**a, size=size, block=block), lambda a: _definition(a, size), a, "float32")


def test_gated_read_large_logits(x64):
    """Logits of size ~50 (no overflow: the block's max is subtracted, the backward reuses the saved lse)."""
    a = _inputs(12, 6, jnp.float64, seed=3)
    a["u"], a["online_logit"] = 20.0 * a["u"], 20.0 * a["online_logit"]
    _check(lambda a: gated_read(**a, size=2, block=4), lambda a: _definition(a, 2), a, "float64")


def test_invisible_non_finite_state_does_not_leak(x64):
    """A non-finite state is read only by the tokens that see it (a select, not a zero weight), and the gradients of
    the per-token inputs of the tokens that do not see it stay finite."""
    a = _inputs(12, 6, jnp.float64, seed=4)
    a["states"] = a["states"].at[:, 4].set(jnp.inf)  # visible to the last segment (tokens 10, 11) only
    y = gated_read(**a, size=2, block=12)
    assert np.isfinite(np.asarray(y[:, :10])).all()
    grads = jax.grad(lambda a: jnp.sum(gated_read(**a, size=2, block=12)[:, :10]))(a)
    for name in ("q", "u", "online_logit", "y_online"):
        assert np.isfinite(np.asarray(grads[name][:, :10])).all(), name


# --- as the weights_read entry of impl="auto" ---------------------------------------------------------------------

OP_CASES = [("linear", "grm", "independent", 2), ("linear", "grm", "checkpoint", 3),
            ("gated_linear", "soup", "checkpoint", 2), ("delta", "grm", "independent", 3)]
ids = lambda c: "-".join(map(str, c))


def _op(inputs, case, impl):
    memory, aggregation, init, size = case
    return memory_caching(**inputs, **mc_kwargs(memory, aggregation, "constant", init, segment_size=size,
                                                chunk_size=size), impl=impl)


def test_auto_enables_the_fused_read():
    assert "fused_gate_read" in resolve_impl("auto", get_memory("linear"), streaming=False, head_dim=64)
    assert "fused_gate_read" not in resolve_impl("xla", get_memory("linear"), streaming=False)
    assert "fused_gate_read" not in resolve_impl("auto", get_memory("titans"), streaming=False, head_dim=64)


# a padded ragged tail for every case; a single segment (nothing cached) and two segments (N = 1) once
OP_LENGTHS = [(case, 11) for case in OP_CASES] + [(OP_CASES[0], 2), (OP_CASES[1], 6)]


@pytest.mark.parametrize("case,length", OP_LENGTHS, ids=lambda c: ids(c) if isinstance(c, tuple) else str(c))
def test_auto_equals_definition_with_gradients(x64, case, length):
    inputs = make_inputs(case[0], batch=1, length=length)
    y, y_ref = _op(inputs, case, "auto"), _op(inputs, case, "naive")
    assert_close(y, y_ref, "float64", "y")
    ct = jax.random.normal(jax.random.key(3), y.shape, y.dtype)
    grad = lambda impl: jax.grad(lambda a: jnp.sum(ct * _op(a, case, impl)))(inputs)
    jax.tree_util.tree_map_with_path(lambda p, x, e: assert_close(x, e, "float64", jax.tree_util.keystr(p)),
                                     grad("auto"), grad("naive"))


@pytest.mark.parametrize("case", OP_CASES[:2], ids=ids)
def test_auto_float32_with_gradients(case):
    inputs = make_inputs(case[0], length=19, dtype=jnp.float32)
    run = lambda impl: jax.jit(lambda a: _op(a, case, impl))
    assert_close(run("auto")(inputs), run("xla")(inputs), "float32", "y")
    ct = jax.random.normal(jax.random.key(4), inputs["v"].shape, jnp.float32)
    grad = lambda impl: jax.jit(jax.grad(lambda a: jnp.sum(ct * _op(a, case, impl))))(inputs)
    jax.tree_util.tree_map_with_path(lambda p, x, e: assert_close(x, e, "float32", jax.tree_util.keystr(p)),
                                     grad("auto"), grad("xla"))


def _has_token_by_state_array(hlo: str, t: int, n: int) -> bool:
    """Whether the compiled module holds an array with both a ``t`` (tokens) and an ``n`` (segments) dimension."""
    for dims in re.findall(r"\[([0-9,]+)\]", hlo):
        sizes = [int(d) for d in dims.split(",")]
        if t in sizes and n in sizes:
            return True
    return False


def test_no_token_by_state_weights():
    """Forward and backward of ``auto`` never form a ``[b, t, h, n]`` array; the dense reference path does."""
    t, size = 40, 4  # 10 segments; no other dimension is 40 or 10
    inputs = make_inputs("linear", batch=1, length=t, dk=8, dv=6, dtype=jnp.float32)
    for impl, expected in (("xla", True), ("auto", False)):
        case = ("linear", "grm", "checkpoint", size)
        loss = lambda a: jnp.sum(_op(a, case, impl) ** 2)
        for fn in (lambda a: _op(a, case, impl), jax.grad(loss)):
            hlo = jax.jit(fn).lower(inputs).compile().as_text()
            assert _has_token_by_state_array(hlo, t, t // size) is expected, impl



def _op_with(inputs, case, stages):
    """The whole-sequence form with the given stages (below ``memory_caching``'s planner)."""
    memory, aggregation, init, size = case
    spec = get_memory(memory)
    b, t, h, dk = inputs["q"].shape
    gates = complete_gates(spec, inputs["gates"], (b, t, h))
    state = initial_state(spec, inputs["params"], b, h, dk, inputs["v"].shape[-1])
    return mc_sequence(inputs["q"], inputs["k"], inputs["v"], inputs["u"], gates, state, spec, aggregation=aggregation,
                       segmentation="constant", segment_size=size, top_k=None, init=init, pool="mean", chunk=size,
                       stages=stages)


def test_dense_read_kernel_comes_first(x64):
    """Where the dense read kernel is enabled (impl="pallas"; auto on TPU), the fused read does not replace it."""
    fused = next(e for e in TABLE["weights_read"] if e.name == "fused_gate_read")
    case = ("linear", "grm", "independent", 2)
    inputs = make_inputs("linear", batch=1, length=8)
    for enabled, expected in ((frozenset({"fused_gate_read"}), True),
                              (frozenset({"fused_gate_read", "cache_read_dense"}), False)):
        seen = []

        def probe(spec, cached, keys, u, q, *rest, **kwargs):
            seen.append(fused.applies(spec, cached, keys, u, q, *rest, **kwargs))
            return q[..., :1]

        jax.eval_shape(lambda a: _op_with(a, case, build_stages(enabled)._replace(weights_read=probe)), inputs)
        assert seen == [expected], enabled
