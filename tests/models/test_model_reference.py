"""The model against a reference composed by hand from ``mc_jax.ops`` calls and plain jnp (DESIGN.md section 4),
the layer stack (scan == loop, compiles once, remat), bf16 compute, and the pure-function view."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mc_jax.layers.block import Unit
from mc_jax.layers.gates import GATES
from mc_jax.models.lm import LanguageModel, count_params, param_summary
from mc_jax.models.pure import PureModel, apply
from mc_jax.ops import memory_caching
from tests.helpers.model_helpers import tiny, tokens
from tests.helpers.tolerances import assert_allclose


def rms(x, scale, eps=1e-6):
    return x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale


def causal_conv(x, kernel):  # x [b, t, c], kernel [w, c]
    w = kernel.shape[0]
    return jax.lax.conv_general_dilated(x, kernel[:, None, :], (1,), [(w - 1, 0)],
                                        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=x.shape[-1])


PHI = {"silu": jax.nn.silu, "identity": lambda y: y, "relu": jax.nn.relu}  # the q / k / v feature maps


def reference_logits(p, toks, cfg):
    m, h, d = cfg.mixer, cfg.num_heads, cfg.d_model // cfg.num_heads
    phi = PHI[m.feature_map]
    x = p["embed"]["embedding"][toks]
    b, t, _ = x.shape
    for layer in range(cfg.num_layers):
        lp = jax.tree.map(lambda a: a[layer], p["units"]["blocks"][0])
        mp = lp["mixer"]
        xn = rms(x, lp["mixer_norm"]["scale"])
        proj = lambda name: xn @ mp[name]["kernel"]
        heads = lambda y: y.reshape(b, t, h, d)
        l2 = lambda y: y / jnp.sqrt(jnp.sum(y * y, -1, keepdims=True) + 1e-6)
        q = l2(heads(causal_conv(phi(proj("q_proj")), mp["q_conv"]["kernel"])))
        k = l2(heads(causal_conv(phi(proj("k_proj")), mp["k_conv"]["kernel"])))
        v = heads(causal_conv(PHI[m.value_map](proj("v_proj")), mp["v_conv"]["kernel"]))
        z = (xn @ mp["gates"]["proj"]["kernel"] + mp["gates"]["proj"]["bias"]).reshape(b, t, len(m.gate_names), h)
        gates = {name: GATES[name].activation(z[:, :, i]) for i, name in enumerate(m.gate_names)}
        y = memory_caching(q, k, v, u=heads(proj("u_proj")), memory=m.memory, aggregation=m.aggregation,
                           segmentation=m.segmentation, segment_size=m.segment_size, gates=gates)
        if m.output_norm:
            y = rms(y, mp["out_norm"]["scale"])
        y = y.reshape(b, t, h * d)
        if m.output_gate:
            bias = mp["gate_proj"].get("bias", 0.0)  # a learned bias unless mixer.gate_bias is None
            y = y * jax.nn.silu(proj("gate_proj") + bias)
        x = x + y @ mp["o_proj"]["kernel"]
        if not cfg.mlp:
            continue
        mlp, xn = lp["mlp"], rms(x, lp["mlp_norm"]["scale"])
        x = x + (jax.nn.silu(xn @ mlp["gate"]["kernel"]) * (xn @ mlp["up"]["kernel"])) @ mlp["down"]["kernel"]
    return rms(x, p["norm"]["scale"]) @ p["embed"]["embedding"].T


BARE = dict(feature_map="identity", value_map="identity", output_norm=False, output_gate=False)


@pytest.mark.parametrize("mixer,mlp", [({}, True), (dict(feature_map="identity"), True), (BARE, False), (BARE, True)],
                         ids=["default", "identity_features", "bare", "bare_with_mlp"])
def test_forward_equals_hand_composed_reference(mixer, mlp):
    cfg = tiny(num_layers=2, memory="gated_linear", aggregation="grm", segment_size=5, **mixer).replace(mlp=mlp)
    pure, state = PureModel.create(cfg, seed=3)
    params = nnx.to_pure_dict(nnx.state(pure.merge(state), nnx.Param))
    switched_off = {"out_norm": not cfg.mixer.output_norm, "gate_proj": not cfg.mixer.output_gate,
                    "mlp": not cfg.mlp, "mlp_norm": not cfg.mlp}
    block = params["units"]["blocks"][0]
    for name, off in switched_off.items():  # a switched-off piece owns no parameters
        assert (name not in block and name not in block["mixer"]) == off, name
    toks = tokens(2, 13, seed=4)
    logits, ref = jax.jit(lambda s, p: (pure.apply(s, toks), reference_logits(p, toks, cfg)))(state, params)
    assert_allclose(logits, ref, "float32")


def unstack(stacked: LanguageModel, looped: LanguageModel) -> None:
    """Give the looped model the stacked model's parameters (unit ``i`` = slice ``i``)."""
    src = nnx.to_pure_dict(nnx.state(stacked, nnx.Param))
    dst = nnx.state(looped, nnx.Param)
    tree = nnx.to_pure_dict(dst)
    tree["embed"], tree["norm"] = src["embed"], src["norm"]
    for i in tree["units"]:
        tree["units"][i] = jax.tree.map(lambda a: a[i], src["units"])
    nnx.replace_by_pure_dict(dst, tree)
    nnx.update(looped, dst)


def test_scanned_stack_traces_unit_once_and_equals_loop(monkeypatch):
    traces = []
    original = Unit.__call__
    monkeypatch.setattr(Unit, "__call__", lambda self, *a, **k: (traces.append(1), original(self, *a, **k))[1])
    cfg = tiny(num_layers=4, pattern=("mc", "attention"), memory="linear", aggregation="residual", segment_size=4)
    scanned = LanguageModel(cfg, rngs=nnx.Rngs(0))
    looped = LanguageModel(cfg.replace(scan_layers=False), rngs=nnx.Rngs(1))
    unstack(scanned, looped)
    toks = tokens(1, 9)
    y_scan = nnx.jit(lambda m, t: m(t))(scanned, toks)
    assert len(traces) == 1  # 2 units of (mc, attention): the unit body is traced (and compiled) once
    traces.clear()
    y_loop = nnx.jit(lambda m, t: m(t))(looped, toks)
    assert len(traces) == 2
    assert_allclose(y_scan, y_loop, "float32")
    assert count_params(scanned) == count_params(looped) == sum(param_summary(looped).values())


def test_bfloat16_compute():
    cfg = tiny(num_layers=2, memory="gated_linear", segment_size=4).replace(dtype="bfloat16")
    pure, state = PureModel.create(cfg, seed=0)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(pure.merge(state), nnx.Param)))
    toks = tokens(2, 10)
    logits = jax.jit(pure.apply)(state, toks)
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    cache = pure.init_cache(state, 2, 10)
    assert jax.tree.leaves(cache)[0].dtype == jnp.bfloat16  # conv states in compute dtype
    assert cache[0].memory.online.dtype == jnp.float32  # recurrent state float32


def test_pure_view_is_functional():
    cfg = tiny(memory="linear", aggregation="residual", segment_size=4)
    model = LanguageModel(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    toks = tokens(1, 6)
    before = jax.tree.map(jnp.copy, state)
    y1 = jax.jit(apply, static_argnums=0)(graphdef, state, toks)
    y2 = nnx.jit(lambda m, t: m(t))(model, toks)
    assert_allclose(y1, y2, "float32_fine")
    jax.tree.map(np.testing.assert_array_equal, state, before)
    pure, _ = PureModel.split(model)
    assert pure.num_params(state) == count_params(model)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        pure.apply(state, toks + 100)


def test_nnx_train_step_lowers_the_loss():
    """The stateful nnx path the trainer uses: nnx.jit + nnx.value_and_grad + nnx.Optimizer (scan + remat)."""
    model = LanguageModel(tiny(num_layers=2, memory="linear", segment_size=4).replace(remat=True), rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    toks = tokens(4, 12)

    @nnx.jit
    def step(model, opt, toks):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(toks)[:, :-1], toks[:, 1:]).mean()

        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value

    losses = [float(step(model, opt, toks)) for _ in range(4)]
    assert losses[-1] < losses[0] - 0.1
