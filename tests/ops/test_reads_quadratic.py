"""The segment-gated quadratic form (``mc_jax.ops.reads_quadratic``) and its dispatch by FLOP count.

Both algorithms of the cached read of a linear memory -- the state read ``impl="auto"`` runs where the quadratic
form has more FLOPs, and the quadratic form (forced here whatever the shape) -- against the per-token definition
(``impl="naive"``), outputs and gradients of every input (q, k, v, u, every gate, the initial state), float64
and float32. Awkward shapes: T neither a multiple of C nor of the tile, C = 1, C = 2, a single segment (N = 0 cached
states), tiles that are a multiple and a divisor of the segment.
"""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mc_jax.dispatch import TABLE, Implementation, build_stages, cost, resolve_impl, tiling
from mc_jax.dispatch import table as dispatch_table
from mc_jax.ops import memory_caching
from mc_jax.ops.memories import get_memory
from mc_jax.ops.reads_quadratic import checkpoint_weights, quadratic_read
from tests.helpers.op_inputs import make_inputs, mc_kwargs
from tests.helpers.tolerances import assert_close
from tests.ops.test_swla import swla_inputs

mc_module = importlib.import_module("mc_jax.ops.memory_caching")  # the module (``mc_jax.ops`` exports the function)


def _forced(*args, **kwargs) -> bool:
    return True


FORCED = {**TABLE, "read_tokens": (Implementation("quadratic", dispatch_table.quadratic, applies=_forced),
                                   TABLE["read_tokens"][-1])}
STATE_READ = {**TABLE, "read_tokens": TABLE["read_tokens"][-1:]}  # auto's other reads, never the quadratic form


@pytest.fixture(params=["quadratic", "state_read"])
def algorithm(request, monkeypatch):
    """``impl="auto"`` with the read forced to one algorithm (the planner is patched; everything else is the op's)."""
    table = FORCED if request.param == "quadratic" else STATE_READ
    monkeypatch.setattr(mc_module, "plan_stages",
                        lambda impl, spec, streaming, head_dim: build_stages(
                            resolve_impl(impl, spec, streaming, head_dim), table))
    return request.param


# (memory, aggregation, init, T, C): both memories, grm / soup / residual, both inits, C = 1 and 2, T not a multiple
# of C (nor of the tile), a single segment (T < C).
CASES = [
    ("linear", "grm", "independent", 19, 2),
    ("linear", "grm", "checkpoint", 13, 4),
    ("gated_linear", "grm", "independent", 13, 1),
    ("gated_linear", "grm", "checkpoint", 19, 2),
    ("gated_linear", "soup", "checkpoint", 11, 3),
    ("linear", "residual", "checkpoint", 19, 1),
    ("gated_linear", "residual", "independent", 13, 2),
    ("gated_linear", "grm", "independent", 5, 8),  # one segment: no cached state
    ("swla", "grm", "independent", 13, 2),
    ("swla", "grm", "checkpoint", 19, 2),  # the window's write crosses every segment boundary
    ("swla", "residual", "checkpoint", 13, 1),
]
ids = lambda c: "-".join(map(str, c))


def _inputs(case, **kw):
    return swla_inputs(**kw) if case[0] == "swla" else make_inputs(case[0], **kw)


def _call(inputs, case, impl):
    memory, aggregation, init, _, size = case
    return memory_caching(**inputs, **mc_kwargs(memory, aggregation, "constant", init, segment_size=size,
                                                chunk_size=1), impl=impl)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_equals_definition(x64, algorithm, case):
    inputs = _inputs(case, length=case[3])
    assert_close(_call(inputs, case, "auto"), _call(inputs, case, "naive"), "float64", algorithm)


@pytest.mark.parametrize("case", CASES[::2], ids=ids)
def test_float32(algorithm, case):
    inputs = _inputs(case, length=case[3], dtype=jnp.float32)
    assert_close(_call(inputs, case, "auto"), _call(inputs, case, "naive"), "float32", algorithm)


# The gradient tests force the quadratic form only: auto's state read has its gradients checked against the same
# definition for every memory x aggregation x init in tests/ops/test_auto_algorithms.py and test_memory_caching.py.
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["quadratic"], indirect=True)
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5], CASES[7], CASES[9]], ids=ids)
def test_gradients_equal_definition(x64, algorithm, case):
    """Gradients of q, k, v, u, every gate and the initial state."""
    inputs = _inputs(case, batch=1, length=min(case[3], 11))
    cotangent = jax.random.normal(jax.random.key(3), inputs["v"].shape, inputs["v"].dtype)
    grad = lambda impl: jax.grad(lambda a: jnp.sum(cotangent * _call(a, case, impl)))(inputs)
    jax.tree_util.tree_map_with_path(lambda p, x, e: assert_close(x, e, "float64", jax.tree_util.keystr(p)),
                                     grad("auto"), grad("naive"))


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["quadratic"], indirect=True)
@pytest.mark.parametrize("case", [CASES[1], CASES[6], CASES[9]], ids=ids)
def test_float32_gradients(algorithm, case):
    """float32 at the case's full length against the dense XLA form (the rung above; both equal the definition in
    float64, ``test_gradients_equal_definition``), as ``test_auto_algorithms.test_auto_float32`` does for outputs:
    the per-token definition's gradient at these lengths took most of the suite's time for this file."""
    inputs = _inputs(case, batch=1, length=case[3], dtype=jnp.float32)
    cotangent = jax.random.normal(jax.random.key(3), inputs["v"].shape, inputs["v"].dtype)
    grad = lambda impl: jax.jit(jax.grad(lambda a: jnp.sum(cotangent * _call(a, case, impl))))(inputs)
    jax.tree_util.tree_map_with_path(lambda p, x, e: assert_close(x, e, "float32", jax.tree_util.keystr(p)),
                                     grad("auto"), grad("xla"))


# --- the tiled form itself ---------------------------------------------------------------------------------------


def _dense_oracle(q, k, v, w, size):
    """The ``T x T`` weight matrix ``W[t, s(j)]`` masked to ``s(j) < s(t)`` (the slow obvious form)."""
    seg = jnp.arange(q.shape[1]) // size
    weights = jnp.where((seg[None, :] < seg[:, None])[None, :, None, :], jnp.take(w, seg, axis=-1), 0.0)
    return jnp.einsum("bthj,bthk,bjhk,bjhv->bthv", weights, q, k, v)


@pytest.mark.parametrize("length,size,tile", [(24, 2, 8), (24, 8, 4), (24, 1, 6), (24, 3, 6), (12, 12, 4)])
def test_tiles_equal_the_dense_form(x64, length, size, tile):
    """Tiles holding whole segments (tile a multiple of C) and tiles inside one segment (a divisor), with gradients
    of q, k, v and the weights (the hand-written VJP)."""
    keys = iter(jax.random.split(jax.random.key(1), 5))
    q, k = (jax.random.normal(next(keys), (2, length, 3, 5)) for _ in range(2))
    v = jax.random.normal(next(keys), (2, length, 3, 4))
    w = jax.random.normal(next(keys), (2, length, 3, length // size))
    ct = jax.random.normal(next(keys), v.shape)
    fast = jax.jit(functools.partial(quadratic_read, size=size, tile=tile))
    slow = functools.partial(_dense_oracle, size=size)
    assert_close(fast(q, k, v, w), slow(q, k, v, w), "float64", "y")
    grads = [jax.grad(lambda *a, f=f: jnp.sum(ct * f(*a)), argnums=(0, 1, 2, 3))(q, k, v, w) for f in (fast, slow)]
    for name, got, want in zip("qkvw", *grads):
        assert np.abs(np.asarray(want)).max() > 0 or length == size, name  # a real gradient (zero for N = 1 only)
        assert_close(got, want, "float64", f"d{name}")


def test_bad_tile_is_refused():
    x = jnp.zeros((1, 12, 1, 2))
    with pytest.raises(ValueError, match="tile"):
        quadratic_read(x, x, x, jnp.zeros((1, 12, 1, 3)), size=4, tile=6)


def test_checkpoint_weights_are_the_reverse_recurrence(x64):
    gamma = jax.random.uniform(jax.random.key(0), (1, 5, 2, 4))
    decay = jax.random.uniform(jax.random.key(1), (1, 4, 2))
    d = np.asarray(decay)
    expected = np.zeros(gamma.shape)
    for s in range(4):  # W[t, s] = sum_{i >= s} gamma[t, i] prod_{s < m <= i} d_m
        for i in range(s, 4):
            expected[..., s] += np.asarray(gamma[..., i]) * np.prod(d[:, s + 1:i + 1], axis=1)[:, None]
    np.testing.assert_allclose(checkpoint_weights(gamma, decay), expected, rtol=1e-12, atol=1e-12)


def test_non_finite_input_never_reaches_earlier_tokens(monkeypatch):
    """A NaN / inf key, value or decay gate at token 9 leaves every earlier output unchanged (quadratic form)."""
    monkeypatch.setattr(mc_module, "plan_stages", lambda *a, **k: build_stages(frozenset({"quadratic"}), FORCED))
    inputs = make_inputs("gated_linear", batch=1, length=16, heads=1, dk=4, dv=4, dtype=jnp.float32)
    for init in ("independent", "checkpoint"):
        kw = mc_kwargs("gated_linear", "grm", "constant", init, segment_size=4, chunk_size=2)
        run = jax.jit(lambda q, k, v, u, gates: memory_caching(q, k, v, u=u, gates=gates, params=inputs["params"],
                                                               impl="auto", **kw))
        args = lambda a: (a["q"], a["k"], a["v"], a["u"], a["gates"])
        clean = np.asarray(run(*args(inputs)))
        assert np.isfinite(clean).all()
        for what in ("k", "v", "log_decay"):
            for value in (np.nan, np.inf):
                bad = dict(inputs, gates=dict(inputs["gates"]))
                if what == "log_decay":
                    bad["gates"]["log_decay"] = bad["gates"]["log_decay"].at[:, 9].set(value)
                else:
                    bad[what] = bad[what].at[:, 9, :, 1].set(value)
                y = np.asarray(run(*args(bad)))
                assert_close(y[:, :9], clean[:, :9], "float32", f"{init} {what}={value}")
                assert not np.isfinite(y[:, 12:]).all(), f"{init} {what}={value}: later tokens read the bad state"


# --- the dispatch -------------------------------------------------------------------------------------------------


def _chosen(memory, aggregation, length, size, d, segmentation="constant"):
    """The ``read_tokens`` entry ``impl="auto"`` runs for this shape (``xla``: the state read)."""
    stages = build_stages(resolve_impl("auto", get_memory(memory), streaming=False, head_dim=d))
    x = jax.ShapeDtypeStruct((1, length, 1, d), jnp.float32)
    gamma = jax.ShapeDtypeStruct((1, length, 1, length // size), jnp.float32)
    args = (get_memory(memory), x, x, x, {}, None, gamma)
    kw = dict(segmentation=segmentation, segment_size=size, init="independent", aggregation=aggregation)
    return next(e.name for e in stages.read_tokens.entries if e.applies(*args, **kw))


def test_dispatch_picks_the_cheaper_algorithm():
    assert "quadratic" in resolve_impl("auto", get_memory("linear"), streaming=False, head_dim=32)
    assert "quadratic" not in resolve_impl("auto", get_memory("linear"), streaming=True, head_dim=32)
    # the default training run's shape (C = 8, D = 32) and C < Dv generally: the quadratic form
    assert _chosen("linear", "grm", 1024, 8, 32) == "quadratic"
    assert _chosen("gated_linear", "soup", 4096, 16, 64) == "quadratic"
    assert _chosen("swla", "grm", 1024, 8, 32) == "quadratic"
    # C >> Dv: the state read
    assert _chosen("linear", "grm", 1024, 256, 32) == "xla"
    assert _chosen("gated_linear", "grm", 4096, 64, 32) == "xla"
    # never where it is not exact or not cheaper: the delta rule, log segments, ssc, residual's prefix read
    assert _chosen("delta", "grm", 1024, 8, 32) == "xla"
    assert _chosen("linear", "grm", 1024, 8, 32, segmentation="log") == "xla"
    assert _chosen("linear", "ssc", 1024, 8, 32) == "xla"
    assert _chosen("linear", "residual", 1024, 8, 32) == "xla"


def test_flop_counts():
    """The counts follow the tiles / blocks run: above the useful pairs by at most the diagonal tiles; the crossover
    at ``C (Dk + Dv) = Dk Dv``."""
    length, d = 4096, 64
    for size in (1, 8, 16, 64):
        useful = cost.useful_read_macs(length, size, d, d)
        tile = tiling.quadratic_tile(length, size)
        assert useful <= cost.quadratic_macs(length, size, d, d) <= useful + length * (2 * tile + size) * 2 * d
    assert cost.useful_read_macs(8, 2, 1, 1) == (0 + 0 + 2 + 2 + 4 + 4 + 6 + 6) * 2
    assert cost.quadratic_pays("grm", length, 16, d, d) and not cost.quadratic_pays("grm", length, 64, d, d)
    assert cost.prefix_read_macs(length, d, d) < cost.quadratic_macs(length, 1, d, d)
