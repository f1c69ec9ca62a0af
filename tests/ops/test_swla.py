"""SWLA (sliding-window linear attention, window 2; mc_jax/ops/memories/swla.py) against its definition.

    M_t = a_t M_{t-1} + b_t k_{t-1} v_{t-1}^T + l_t k_t v_t^T,   a_t = exp(log_decay_t),   o_t = M_t^T q_t

The reference here is a plain per-token loop written independently of ``mc_jax.ops``. The chunk form must equal it
in float64 (1e-10) and float32 (1e-5) on outputs, final states and the gradients of every input; within Memory
Caching the parallel and streaming forms must equal the op's own definition (``impl="naive"``) for every
aggregation, segmentation and init.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import pytest

from mc_jax.ops import init_cache, memory_caching, reads_grouped
from mc_jax.ops.reads_grouped import read_chosen
from tests.helpers.op_inputs import AGGREGATION_NAMES, make_inputs, slice_time
from tests.helpers.tolerances import assert_close

LAYOUTS = [("constant", "independent"), ("constant", "checkpoint"), ("log", "independent"), ("log", "checkpoint")]
GATES = ("log_decay", "beta_prev", "lam")


def swla_inputs(*, batch=2, length=19, heads=2, dk=8, dv=6, dtype=jnp.float64, seed=0, initial_state=True):
    """``make_inputs`` of a gated linear memory plus the two SWLA write gates in (0, 1)."""
    inputs = make_inputs("gated_linear", batch=batch, length=length, heads=heads, dk=dk, dv=dv, dtype=jnp.float64,
                         seed=seed, initial_state=initial_state)
    k1, k2 = jax.random.split(jax.random.key(seed + 100))
    shape = (batch, length, heads)
    inputs["gates"]["beta_prev"] = jax.nn.sigmoid(jax.random.normal(k1, shape))
    inputs["gates"]["lam"] = jax.nn.sigmoid(jax.random.normal(k2, shape))
    return jax.tree.map(lambda x: x.astype(dtype), inputs)


def reference_swla(q, k, v, gates, params, states=None):
    """Per-token loop: outputs ``[b, t, h, dv]`` and the final ``(M, k_prev, v_prev)`` (``states``: a list that
    receives ``M_t`` of every token)."""
    b, t, h, dk = q.shape
    s = params if params is not None else jnp.zeros((b, h, dk, v.shape[-1]), q.dtype)
    k_prev, v_prev = jnp.zeros_like(k[:, 0]), jnp.zeros_like(v[:, 0])
    outer = lambda x, y: jnp.einsum("bhk,bhv->bhkv", x, y)
    outs = []
    for i in range(t):
        col = lambda name, i=i: gates[name][:, i, :, None, None]
        s = (jnp.exp(col("log_decay")) * s + col("beta_prev") * outer(k_prev, v_prev)
             + col("lam") * outer(k[:, i], v[:, i]))
        k_prev, v_prev = k[:, i], v[:, i]
        if states is not None:
            states.append(s)
        outs.append(jnp.einsum("bhk,bhkv->bhv", q[:, i], s))
    return jnp.stack(outs, 1), (s, k_prev, v_prev)


def _base(inputs, chunk, **extra):
    """The op with one segment covering the sequence: the base memory."""
    return memory_caching(**inputs, memory="swla", segment_size=48, chunk_size=chunk, **extra)


@pytest.mark.parametrize("length,chunk", [(37, 8), (5, 4), (16, 16), (9, 1)])
def test_chunk_form_equals_recurrence_float64(x64, length, chunk):
    inputs = swla_inputs(length=length)
    expected, (s, k_prev, v_prev) = reference_swla(inputs["q"], inputs["k"], inputs["v"], inputs["gates"],
                                                   inputs["params"])
    assert_close(_base(inputs, chunk), expected, "float64", "parallel")
    y, cache = _base(inputs, chunk, return_cache=True)
    assert_close(y, expected, "float64", "stream")
    assert_close(cache.online["S"], s, "float64", "final M")
    assert_close(cache.online["k_prev"], k_prev, "float64", "final k_prev")
    assert_close(cache.online["v_prev"], v_prev, "float64", "final v_prev")


def test_chunk_form_float32():
    inputs = swla_inputs(length=37, dtype=jnp.float32)
    with jax.enable_x64(True):
        ref = jax.tree.map(lambda x: x.astype(jnp.float64), inputs)
        expected, (s, _, _) = reference_swla(ref["q"], ref["k"], ref["v"], ref["gates"], ref["params"])
    y, cache = _base(inputs, 8, return_cache=True)
    assert y.dtype == jnp.float32
    assert_close(y, expected, "float32", "outputs")
    assert_close(_base(inputs, 8), expected, "float32", "parallel outputs")
    assert_close(cache.online["S"], s, "float32", "final M")


def test_gradients_of_every_input_match_recurrence(x64):
    inputs = swla_inputs(batch=1, length=11)
    cot = jax.random.normal(jax.random.key(1), inputs["v"].shape, jnp.float64)
    cot_s = jax.random.normal(jax.random.key(2), (1, 2, 8, 6), jnp.float64)

    def loss_fast(args):
        y, cache = _base(args, 4, return_cache=True)
        return jnp.sum(cot * y) + jnp.sum(cot_s * cache.online["S"]) + jnp.sum(_base(args, 4) * cot)

    def loss_ref(args):
        y, (s, _, _) = reference_swla(args["q"], args["k"], args["v"], args["gates"], args["params"])
        return 2 * jnp.sum(cot * y) + jnp.sum(cot_s * s)

    g_fast, g_ref = jax.grad(loss_fast)(inputs), jax.grad(loss_ref)(inputs)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(g_ref)]
    assert {"['params']", "['q']", "['k']", "['v']"} | {f"['gates']['{g}']" for g in GATES} <= set(names) | {"['u']"}
    for name, a, b in zip(names, jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
        if name != "['u']":
            assert jnp.any(b != 0), f"zero reference gradient {name}"
        assert_close(a, b, "float64", f"grad {name}")


def test_gate_of_exactly_zero_decay_is_exact(x64):
    """``log_decay = -inf`` (a = 0) wipes ``M``; the window term of the next token still writes its pair."""
    inputs = swla_inputs(length=9)
    inputs["gates"]["log_decay"] = inputs["gates"]["log_decay"].at[:, 4].set(-jnp.inf)
    expected, _ = reference_swla(inputs["q"], inputs["k"], inputs["v"], inputs["gates"], inputs["params"])
    y = _base(inputs, 8)
    assert jnp.all(jnp.isfinite(y))
    assert_close(y, expected, "float64")


# ---- within Memory Caching -------------------------------------------------------------------------------------
def _mc(inputs, aggregation, layout, **extra):
    segmentation, init = layout
    return memory_caching(**inputs, memory="swla", aggregation=aggregation, segmentation=segmentation, init=init,
                          segment_size=4, chunk_size=2, top_k=2 if aggregation == "ssc" else None, **extra)


CASES = [(a, lay) for a in AGGREGATION_NAMES for lay in LAYOUTS]
case_id = lambda c: f"{c[0]}-{c[1][0]}-{c[1][1]}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parallel_and_stream_equal_definition(x64, case):
    aggregation, layout = case
    inputs = swla_inputs(length=19)
    expected = _mc(inputs, aggregation, layout, impl="naive")
    assert_close(_mc(inputs, aggregation, layout, impl="xla"), expected, "float64", "parallel")
    y, cache = _mc(inputs, aggregation, layout, return_cache=True)
    assert_close(y, expected, "float64", "stream")
    assert int(cache.position) == 19


# one gradient case per (segmentation, init), together covering every aggregation
GRAD_CASES = [("grm", LAYOUTS[0]), ("ssc", LAYOUTS[1]), ("soup", LAYOUTS[2]), ("residual", LAYOUTS[3])]


@pytest.mark.parametrize("case", GRAD_CASES, ids=case_id)
def test_gradients_equal_definition(x64, case):
    aggregation, layout = case
    inputs = swla_inputs(batch=1, length=11)
    cot = jax.random.normal(jax.random.key(7), inputs["v"].shape, jnp.float64)
    expected = jax.grad(lambda a: jnp.sum(cot * _mc(a, aggregation, layout, impl="naive")))(inputs)
    forms = {"parallel": lambda a: jnp.sum(cot * _mc(a, aggregation, layout)),
             "stream": lambda a: jnp.sum(cot * _mc(a, aggregation, layout, return_cache=True)[0])}
    for form, loss in forms.items():
        got = jax.jit(jax.grad(loss))(inputs)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected)):
            name = jax.tree_util.keystr(path)
            assert jnp.any(b != 0) or aggregation == "residual" and "'u'" in name, f"zero gradient {name}"
            assert_close(a, b, "float64", f"{form} d{name}")


def test_ssc_over_many_segments_takes_the_grouped_read_and_equals_definition(x64, monkeypatch):
    """Segments of 2 tokens: ``impl="auto"`` reads ssc as the grouped matmul (``mc_jax.ops.reads_grouped``); its
    outputs and the gradients of every input equal the definition."""
    calls = []
    monkeypatch.setattr(reads_grouped, "read_chosen", lambda *a, **k: calls.append(1) or read_chosen(*a, **k))
    inputs = swla_inputs(batch=1, length=13)
    mc = lambda a, impl: memory_caching(**a, memory="swla", aggregation="ssc", segment_size=2, chunk_size=2, top_k=1,
                                        impl=impl)
    cot = jax.random.normal(jax.random.key(8), inputs["v"].shape, jnp.float64)
    assert_close(mc(inputs, "auto"), mc(inputs, "naive"), "float64", "y")
    assert calls
    got, expected = (jax.grad(lambda a, impl=impl: jnp.sum(cot * mc(a, impl)))(inputs) for impl in ("auto", "naive"))
    jax.tree_util.tree_map_with_path(lambda p, a, b: assert_close(a, b, "float64", jax.tree_util.keystr(p)),
                                     got, expected)


@pytest.mark.parametrize("case", [("grm", LAYOUTS[2]), ("ssc", LAYOUTS[1])], ids=case_id)
def test_two_calls_and_token_by_token_equal_one_call(case):
    """Split mid-segment and mid inner chunk, and decode one token at a time: the cache carries ``k_prev``."""
    aggregation, (segmentation, init) = case
    inputs = swla_inputs(length=13, dtype=jnp.float32)
    expected = _mc(inputs, aggregation, (segmentation, init))
    new_cache = lambda: init_cache(2, 2, 8, 6, max_len=13, memory="swla", segmentation=segmentation, segment_size=4,
                                   init=init, chunk_size=2, params=inputs["params"])
    cache, parts = new_cache(), []
    for start, stop in ((0, 7), (7, 13)):
        y, cache = _mc(slice_time(inputs, start, stop), aggregation, (segmentation, init), cache=cache,
                       return_cache=True)
        parts.append(y)
    assert_close(jnp.concatenate(parts, 1), expected, "float32", "two calls")
    cache, parts = new_cache(), []
    for t in range(13):
        y, cache = _mc(slice_time(inputs, t, t + 1), aggregation, (segmentation, init), cache=cache,
                       return_cache=True)
        parts.append(y)
    assert_close(jnp.concatenate(parts, 1), expected, "float32", "token by token")


def test_float32_matches_float64_definition():
    inputs = swla_inputs(length=19, dtype=jnp.float32)
    y = _mc(inputs, "grm", LAYOUTS[0])
    assert y.dtype == jnp.float32
    with jax.enable_x64(True):
        expected = _mc(jax.tree.map(lambda x: x.astype(jnp.float64), inputs), "grm", LAYOUTS[0], impl="naive")
    assert_close(y, expected, "float32")


def test_segment_boundary_decision(x64):
    """Independent segments drop the window term across a boundary; checkpoint keeps it (swla.py docstring).

    Residual + independent + constant segments of 4 without decay equals one SWLA run over the whole sequence
    whose ``b`` is zeroed at every segment's first token; checkpoint + residual reads the prefix state instead.
    """
    inputs = swla_inputs(length=13, initial_state=False)
    inputs["params"] = None
    inputs["gates"]["log_decay"] = jnp.zeros_like(inputs["gates"]["log_decay"])
    first = (jnp.arange(13) % 4 == 0)[None, :, None]
    cut = dict(inputs["gates"], beta_prev=jnp.where(first, 0.0, inputs["gates"]["beta_prev"]))
    expected, _ = reference_swla(inputs["q"], inputs["k"], inputs["v"], cut, None)
    assert_close(_mc(inputs, "residual", LAYOUTS[0]), expected, "float64", "independent")
    states = []
    full, _ = reference_swla(inputs["q"], inputs["k"], inputs["v"], inputs["gates"], None, states)
    assert not jnp.allclose(full, expected)  # the boundary term matters on these inputs
    # checkpoint: online read = the continuous run; cached memories = its states at the segment ends
    read = lambda t, e: jnp.einsum("bhk,bhkv->bhv", inputs["q"][:, t], states[e - 1])
    cached = [sum((read(t, e) for e in range(4, t - t % 4 + 1, 4)), jnp.zeros_like(full[:, 0])) for t in range(13)]
    assert_close(_mc(inputs, "residual", LAYOUTS[1]), full + jnp.stack(cached, 1), "float64", "checkpoint")


def test_pallas_falls_back_to_xla_with_a_warning():
    inputs = swla_inputs(length=9, dtype=jnp.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = _mc(inputs, "grm", LAYOUTS[0], impl="pallas")
    assert any("swla" in str(w.message) for w in caught)
    assert_close(y, _mc(inputs, "grm", LAYOUTS[0], impl="xla"), "float32")


def test_missing_gates_are_named():
    inputs = swla_inputs(length=5)
    del inputs["gates"]["lam"]
    with pytest.raises(ValueError, match="lam"):
        _base(inputs, 4)
