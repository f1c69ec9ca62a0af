"""Bad values at the op and model boundary: non-finite inputs stay causal in every form and kernel, gates outside
their range are refused (checkify under jit), a huge segment costs one segment of T tokens, a full cache and
out-of-range token ids are detectable under jit and never silently alias."""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from mc_jax.config import MixerConfig, ModelConfig
from mc_jax.models import PureModel
from mc_jax.ops import init_cache, memory_caching
from mc_jax.ops.memories import GATE_RANGES, get_memory, initial_state
from mc_jax.ops.sequence import mc_sequence
from tests.helpers.op_inputs import make_inputs, mc_kwargs
from tests.helpers.tolerances import assert_close

T, BAD = 16, 9  # the bad token sits mid-chunk (chunk 2) and mid-segment (segment 4)

# (memory, aggregation, segmentation, init, impl): every memory, every aggregation, both segmentations and inits,
# the Pallas kernels (interpret mode) and the naive definition.
CASES = [
    ("linear", "residual", "constant", "independent", "xla"),
    ("gated_linear", "grm", "log", "independent", "xla"),
    ("delta", "ssc", "constant", "checkpoint", "xla"),
    ("dla", "grm", "constant", "independent", "xla"),
    ("titans", "soup", "log", "independent", "xla"),
    ("titans", "residual", "constant", "checkpoint", "xla"),
    ("gated_linear", "soup", "constant", "independent", "pallas"),
    ("delta", "ssc", "constant", "independent", "pallas"),
    ("delta", "grm", "constant", "independent", "naive"),
    ("dla", "residual", "log", "independent", "naive"),
    ("delta", "grm", "log", "independent", "stream"),  # the streaming form (a cache, chunk by chunk)
    ("titans", "soup", "constant", "checkpoint", "stream"),
]


def _runner(params, kw, impl):
    """``run(inputs)``: the op compiled once (gates traced, so NaN gates are not refused) or the naive loops."""
    stream = impl == "stream"
    impl = "xla" if stream else impl
    f = lambda q, k, v, u, gates: memory_caching(q, k, v, u=u, gates=gates, params=params, impl=impl,
                                                 return_cache=stream, **kw)
    if stream:
        f = (lambda f: lambda *a: f(*a)[0])(f)
    g = f if impl == "naive" else jax.jit(f)

    def run(inputs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # impl='pallas' falls back to XLA for parts without a kernel
            return np.asarray(g(inputs["q"], inputs["k"], inputs["v"], inputs["u"], inputs["gates"]))

    return run


@pytest.mark.parametrize("memory,aggregation,segmentation,init,impl", CASES)
def test_non_finite_input_never_reaches_earlier_tokens(memory, aggregation, segmentation, init, impl):
    inputs = make_inputs(memory, batch=1, length=T, heads=1, dk=4, dv=4, dtype=jnp.float32)
    kw = mc_kwargs(memory, aggregation, segmentation, init, segment_size=4, chunk_size=2, top_k=1)
    run = _runner(inputs["params"], kw, impl)
    clean = run(inputs)
    assert np.isfinite(clean).all()
    spec = get_memory(memory)
    targets = ["k", "v"] + (list(spec.gate_names[:1]) if impl != "naive" else [])  # naive: concrete gates are refused
    for what in targets:
        for value in (np.nan, np.inf):
            bad = dict(inputs, gates=dict(inputs["gates"]))
            if what in ("k", "v"):
                bad[what] = bad[what].at[:, BAD, :, 1].set(value)
            else:
                bad["gates"][what] = bad["gates"][what].at[:, BAD].set(value)
            y = run(bad)
            name = f"{memory}/{aggregation}/{segmentation}/{init}/{impl}: {what}[{BAD}] = {value}"
            assert_close(y[:, :BAD], clean[:, :BAD], "float32", name)
            assert not np.isfinite(y[:, BAD]).all(), name  # the token itself reads its non-finite input


# ---- gates outside their range -----------------------------------------------------------------------------------
BAD_GATES = [("gated_linear", "log_decay", 0.5), ("gated_linear", "log_decay", np.nan), ("delta", "beta", 1.5),
             ("dla", "alpha", -0.1), ("titans", "eta", 2.0), ("dla", "theta", np.inf)]


@pytest.mark.parametrize("memory,gate,value", BAD_GATES)
def test_gates_outside_their_range_are_refused(memory, gate, value):
    inputs = make_inputs(memory, batch=1, length=8, heads=1, dk=4, dv=4, dtype=jnp.float32)
    gates = dict(inputs["gates"], **{gate: inputs["gates"][gate].at[0, 3, 0].set(value)})
    kw = mc_kwargs(memory, "residual", segment_size=4, chunk_size=2)
    call = lambda g, checked=False: memory_caching(inputs["q"], inputs["k"], inputs["v"], gates=g,
                                                   params=inputs["params"], checked=checked, **kw)
    lo, hi = GATE_RANGES[gate]
    with pytest.raises(ValueError, match=rf"gate '{gate}' must lie in \[{lo}, {hi}\].*1 of 8 values"):
        call(gates)
    err, _ = checkify.checkify(jax.jit(partial(call, checked=True)))(gates)
    assert f"gate '{gate}' has values outside" in str(err.get())
    err, _ = checkify.checkify(jax.jit(partial(call, checked=True)))(inputs["gates"])
    assert err.get() is None
    call(dict(inputs["gates"], **({"log_decay": jnp.full((1, 8, 1), -jnp.inf)} if gate == "log_decay" else {})))
    # concrete gates closed over by a jitted function are checked at trace time (not staged into the trace)
    with pytest.raises(ValueError, match=rf"gate '{gate}' must lie in"):
        jax.jit(lambda q: memory_caching(q, inputs["k"], inputs["v"], gates=gates, params=inputs["params"], **kw))(
            inputs["q"])
    jax.jit(lambda q: memory_caching(q, inputs["k"], inputs["v"], gates=inputs["gates"], params=inputs["params"],
                                     **kw))(inputs["q"])


# ---- segment size far above the sequence -------------------------------------------------------------------------
@pytest.mark.parametrize("memory,segmentation", [("gated_linear", "constant"), ("titans", "log")])
def test_huge_segment_costs_one_segment_and_gives_the_same_outputs(memory, segmentation):
    inputs = make_inputs(memory, batch=1, length=13, heads=1, dk=4, dv=4, dtype=jnp.float32)
    kw = mc_kwargs(memory, "grm", segmentation, segment_size=1 << 12, chunk_size=4)
    call = lambda q, k, v, u, g: memory_caching(q, k, v, u=u, gates=g, params=inputs["params"], **kw)
    args = (inputs["q"], inputs["k"], inputs["v"], inputs["u"], inputs["gates"])
    jaxpr = jax.make_jaxpr(call)(*args)
    dims = [d for eqn in jaxpr.eqns for var in eqn.outvars for d in getattr(var.aval, "shape", ())]
    assert max(dims) < 64, "the op padded the sequence to the whole segment"
    spec = get_memory(memory)
    from mc_jax.ops.memories import complete_gates

    state = initial_state(spec, inputs["params"], 1, 1, 4, 4)
    big = 256  # (the uncapped reference pads to a whole segment: keep it affordable)
    uncapped = mc_sequence(inputs["q"], inputs["k"], inputs["v"], inputs["u"],
                           complete_gates(spec, inputs["gates"], (1, 13, 1)), state, spec, aggregation="grm",
                           segmentation=segmentation, segment_size=big, top_k=None, init="independent",
                           pool="mean", chunk=4)
    capped = memory_caching(*args[:3], u=args[3], gates=args[4], params=inputs["params"], **dict(kw, segment_size=big))
    assert_close(capped, uncapped, "float32", "capped vs uncapped")
    assert_close(call(*args), uncapped, "float32", "segment 4096 vs uncapped 256")


# ---- a full streaming cache under jit --------------------------------------------------------------------------------
def test_cache_overflow_under_jit_is_detected_by_checkify():
    inputs = make_inputs("linear", batch=1, length=12, heads=1, dk=4, dv=4, dtype=jnp.float32)
    cache = init_cache(1, 1, 4, 4, max_len=8, segment_size=4, chunk_size=2)  # 2 slots: 8 tokens

    def step(cache, q, k, v, checked=True):
        return memory_caching(q, k, v, segment_size=4, chunk_size=2, cache=cache, return_cache=True, checked=checked)

    with pytest.raises(ValueError, match="the cache has 2 slots but 12 tokens need 3"):
        step(cache, inputs["q"], inputs["k"], inputs["v"])
    err, _ = checkify.checkify(jax.jit(step))(cache, inputs["q"], inputs["k"], inputs["v"])
    assert "cache overflow: 0 + 12 tokens exceed the cache's 8 tokens" in str(err.get())
    err, (_, cache8) = checkify.checkify(jax.jit(step))(cache, *(inputs[n][:, :8] for n in "qkv"))
    assert err.get() is None
    err, _ = checkify.checkify(jax.jit(step))(cache8, *(inputs[n][:, 8:9] for n in "qkv"))
    assert "cache overflow: 8 + 1 tokens" in str(err.get())


# ---- out-of-range token ids ----------------------------------------------------------------------------------------
def test_out_of_range_token_ids_never_alias_and_are_detectable_under_jit():
    config = ModelConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=1, scan_layers=False,
                         mixer=MixerConfig(kind="mc", memory="linear", aggregation="grm", segment_size=4))
    pure, state = PureModel.create(config)
    good = jnp.array([[1, 2, 3, 4, 5, 6, 7, 31]])
    ref = np.asarray(jax.jit(pure.apply)(state, good))
    assert np.isfinite(ref).all()
    for bad_id in (-1, 32, 1 << 20):
        tokens = good.at[0, 5].set(bad_id)
        with pytest.raises(ValueError, match=f"holds id {bad_id}, outside the vocabulary"):
            pure.apply(state, tokens)
        y = np.asarray(jax.jit(pure.apply)(state, tokens))
        assert np.isnan(y[0, 5]).all(), f"id {bad_id} read another token's embedding"
        assert_close(y[:, :5], ref[:, :5], "float32", "tokens before the bad id")
        err, _ = checkify.checkify(jax.jit(partial(pure.apply, checked=True)))(state, tokens)
        assert "tokens holds ids outside the vocabulary [0, 32)" in str(err.get())
    err, _ = checkify.checkify(jax.jit(partial(pure.apply, checked=True)))(state, good)
    assert err.get() is None
