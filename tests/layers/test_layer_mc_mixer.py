"""The MC mixer: the one-segment identity with the base layer, shapes, parameters, the table of gates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mc_jax.config import MixerConfig, ModelConfig
from mc_jax.layers.block import MIXERS, Block, make_mixer
from mc_jax.layers.mc_mixer import MCMixer
from tests.helpers.tolerances import assert_allclose, assert_close


def config(**mixer):
    return ModelConfig(vocab_size=50, d_model=32, num_layers=2, num_heads=2, mixer=MixerConfig(**mixer))


def transplant(src: nnx.Module, dst: nnx.Module) -> None:
    """Copy the parameters ``dst`` has from ``src``."""
    src_params = nnx.to_pure_dict(nnx.state(src, nnx.Param))
    dst_state = nnx.state(dst, nnx.Param)
    nnx.replace_by_pure_dict(dst_state, {k: src_params[k] for k in nnx.to_pure_dict(dst_state)})
    nnx.update(dst, dst_state)


def test_one_segment_equals_base_layer():
    """With segment_size >= T nothing is cached: grm (gamma_online = 1) is the base memory ('none')."""
    cfg = config(memory="titans", aggregation="grm", segment_size=20, chunk_size=10)
    mc = MCMixer(cfg, "mc", rngs=nnx.Rngs(0))
    base = MCMixer(cfg, "none", rngs=nnx.Rngs(1))
    transplant(mc, base)
    x = jax.random.normal(jax.random.key(0), (2, 20, 32))
    y_mc, _ = jax.jit(lambda x: mc(x))(x)
    y_base, _ = jax.jit(lambda x: base(x))(x)
    assert_allclose(y_mc, y_base, "float32_fine")


def test_parameters_per_memory():
    deep = MCMixer(config(memory="titans", segment_size=8, chunk_size=4, expansion=2), "mc", rngs=nnx.Rngs(0))
    assert deep.W1.shape == (2, 16, 32) and deep.W2.shape == (2, 32, 16)
    assert deep.gates.names == ("theta", "eta", "alpha")
    assert deep.u_proj is not None
    lin = MCMixer(config(memory="linear", aggregation="residual"), "mc", rngs=nnx.Rngs(0))
    assert lin.u_proj is None and lin.gates.proj is None and not hasattr(lin, "W1")
    delta = MCMixer(config(memory="delta", gates=("beta",)), "mc", rngs=nnx.Rngs(0))
    assert delta.gates.names == ("beta",)
    assert MCMixer(config(), "none", rngs=nnx.Rngs(0)).u_proj is None  # the base layer has no router


def test_mixer_table_and_block_shapes():
    assert set(MIXERS) == {"mc", "none", "attention", "sliding_window"}
    with pytest.raises(ValueError, match="unknown mixer kind"):
        make_mixer("rnn", config(), rngs=nnx.Rngs(0))
    block = Block(config(kind="sliding_window", window=4), "sliding_window", rngs=nnx.Rngs(0))
    y, cache = jax.jit(lambda x: block(x))(jnp.ones((1, 6, 32)))
    assert y.shape == (1, 6, 32) and cache is None


def test_mixer_bfloat16_compute_keeps_float32_params():
    cfg = config(memory="delta", segment_size=8).replace(dtype="bfloat16")
    mixer = MCMixer(cfg, "mc", rngs=nnx.Rngs(0))
    y, _ = jax.jit(lambda x: mixer(x))(jnp.ones((1, 12, 32), jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(mixer, nnx.Param)))


def test_zero_router_init_gives_uniform_gates_and_still_learns():
    """``router_init='zeros'``: every available memory gets the same GRM weight, 1/n, at initialisation. The per-head
    RMSNorm after the read removes that per-token factor, so the layer equals the same layer with residual
    aggregation (weights 1); large weights and a tiny epsilon make the norm scale-free. The router still gets
    gradients."""
    cfg = config(memory="linear", aggregation="grm", segment_size=3, router_init="zeros").replace(init_std=0.5,
                                                                                                 norm_eps=1e-12)
    grm = MCMixer(cfg, "mc", rngs=nnx.Rngs(0))
    assert not np.any(np.asarray(grm.u_proj.kernel[...]))
    residual = MCMixer(config(memory="linear", aggregation="residual", segment_size=3).replace(init_std=0.5,
                                                                                               norm_eps=1e-12),
                       "mc", rngs=nnx.Rngs(1))
    transplant(grm, residual)
    x = jax.random.normal(jax.random.key(0), (2, 11, 32))
    y_grm, _ = jax.jit(lambda x: grm(x))(x)
    y_res, _ = jax.jit(lambda x: residual(x))(x)
    assert_close(y_grm, y_res, "float32", "grm with a zero router == residual after the per-head norm")
    graphdef, params, rest = nnx.split(grm, nnx.Param, ...)
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(x)[0] ** 2))(params)
    assert float(jnp.abs(grads["u_proj"]["kernel"][...]).max()) > 1e-6
    with pytest.raises(ValueError, match="mixer.router_init='ones' is not one of"):
        MixerConfig(router_init="ones")


@pytest.mark.parametrize("aggregation", ["grm", "ssc", "token"])
def test_router_temperature_divides_the_gate_logits(aggregation):
    """``router_temperature=tau``: the layer equals the layer at ``tau = 1`` whose router projection ``W_u`` is divided
    by ``tau`` (the logits are linear in ``W_u``), decoding included; and it is not the layer at ``tau = 1``."""
    top_k = 2 if aggregation == "ssc" else None
    hot = MCMixer(config(aggregation=aggregation, top_k=top_k, segment_size=3, router_temperature=0.25)
                  .replace(init_std=0.5), "mc", rngs=nnx.Rngs(0))
    plain = MCMixer(config(aggregation=aggregation, top_k=top_k, segment_size=3).replace(init_std=0.5), "mc",
                    rngs=nnx.Rngs(1))
    transplant(hot, plain)
    x = jax.random.normal(jax.random.key(0), (2, 11, 32))
    y_plain, _ = plain(x)
    assert not np.allclose(hot(x)[0], y_plain, atol=1e-4)
    plain.u_proj.kernel[...] = hot.u_proj.kernel[...] / 0.25
    assert_allclose(hot(x)[0], plain(x)[0], "float32")
    cache, steps = hot.init_cache(2, 11), []
    for t in range(11):
        y_t, cache = hot(x[:, t : t + 1], cache)
        steps.append(y_t)
    assert_allclose(jnp.concatenate(steps, axis=1), hot(x)[0], "float32")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="mixer.router_temperature must be a positive finite number"):
            MixerConfig(router_temperature=bad)


def test_ablation_aggregations_token_and_uniform():
    """``token``: one router logit per head (``u_proj`` d -> heads), zero-initialised it is ``uniform``, which has no
    router at all; the token gates get gradients."""
    token = MCMixer(config(memory="delta", aggregation="token", segment_size=3, router_init="zeros"), "mc",
                    rngs=nnx.Rngs(0))
    uniform = MCMixer(config(memory="delta", aggregation="uniform", segment_size=3), "mc", rngs=nnx.Rngs(1))
    assert token.u_proj.kernel[...].shape == (32, 2) and uniform.u_proj is None
    transplant(token, uniform)
    x = jax.random.normal(jax.random.key(0), (2, 11, 32))
    assert_allclose(jax.jit(lambda x: token(x))(x)[0], jax.jit(lambda x: uniform(x))(x)[0], "float32_tight")
    graphdef, params, rest = nnx.split(token, nnx.Param, ...)
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(x)[0] ** 2))(params)
    assert float(jnp.abs(grads["u_proj"]["kernel"][...]).max()) > 1e-6


def _out_pieces(mixer, x):
    """The op's read ``y [b t h dv]`` and the gate pre-activation ``x W_gate (+ b)`` of ``mixer`` (by hand)."""
    from mc_jax.config import FEATURE_MAPS
    from mc_jax.layers.norms import l2_normalize
    from mc_jax.ops import memory_caching

    b, t, _ = x.shape
    heads = lambda z, dim: z.reshape(b, t, mixer.heads, dim)
    m = mixer.settings
    q = l2_normalize(heads(mixer.q_conv(FEATURE_MAPS[m.feature_map](mixer.q_proj(x)))[0], mixer.dk))
    k = l2_normalize(heads(mixer.k_conv(FEATURE_MAPS[m.feature_map](mixer.k_proj(x)))[0], mixer.dk))
    v = heads(mixer.v_conv(FEATURE_MAPS[m.value_map](mixer.v_proj(x)))[0], mixer.dv)
    y = memory_caching(q, k, v, u=heads(mixer.u_proj(x), mixer.dk), memory=m.memory, aggregation=m.aggregation,
                       segment_size=m.segment_size, gates=mixer.gates(x))
    return y, mixer.gate_proj(x).reshape(y.shape)


@pytest.mark.parametrize("activation, position", [("silu", "after_norm"), ("sigmoid", "after_norm"),
                                                   ("silu", "before_norm")])
def test_output_gate_options(activation, position):
    """``gate_activation`` / ``gate_bias`` / ``gate_position`` against the output written out by hand."""
    cfg = config(memory="delta", segment_size=4, gate_activation=activation, gate_bias=2.0, gate_position=position)
    mixer = MCMixer(cfg, "mc", rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(mixer.gate_proj.bias[...]), 2.0)
    x = jax.random.normal(jax.random.key(1), (2, 9, 32))
    y, pre = _out_pieces(mixer, x)
    gate = jax.nn.silu(pre) if activation == "silu" else jax.nn.sigmoid(pre)
    out = mixer.out_norm(y * gate) if position == "before_norm" else mixer.out_norm(y) * gate
    expected = mixer.o_proj(out.reshape(2, 9, -1))
    assert_allclose(mixer(x)[0], expected, "float32_fine")
    assert config(memory="delta").mixer.gate_bias == 2.0  # the default since the eb study: the gate starts open
    assert MCMixer(config(memory="delta", gate_bias=None), "mc", rngs=nnx.Rngs(0)).gate_proj.bias is None


def test_output_gate_options_are_validated():
    with pytest.raises(ValueError, match="mixer.gate_activation='tanh' is not one of"):
        MixerConfig(gate_activation="tanh")
    with pytest.raises(ValueError, match="mixer.gate_position='middle' is not one of"):
        MixerConfig(gate_position="middle")
    with pytest.raises(ValueError, match="gate_bias must be a finite number"):
        MixerConfig(gate_bias=float("inf"))
    with pytest.raises(ValueError, match="needs mixer.output_norm=true"):
        MixerConfig(gate_position="before_norm", output_norm=False)
