"""Norms, short convolution, RoPE, gates: small pieces of the blocks."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from mc_jax.layers.conv import ShortConv
from mc_jax.layers.gates import GATES, Gates
from mc_jax.layers.norms import RMSNorm, l2_normalize
from mc_jax.layers.rope import apply_rope
from tests.helpers.tolerances import assert_allclose


def test_rmsnorm_per_head_normalises_each_head():
    x = jax.random.normal(jax.random.key(0), (2, 5, 3, 4)) * 7
    norm = RMSNorm((3, 4))
    y = norm(x)
    assert_allclose(jnp.sqrt(jnp.mean(y**2, -1)), 1.0, "rms_norm")
    norm.scale[...] = jnp.arange(12.0).reshape(3, 4)
    assert_allclose(norm(x), y * jnp.arange(12.0).reshape(3, 4), "float32_fine")


def test_rmsnorm_output_dtype_and_float32_statistics():
    x = (jax.random.normal(jax.random.key(1), (3, 8)) * 100).astype(jnp.bfloat16)
    y = RMSNorm((8,), dtype=jnp.bfloat16)(x)
    assert y.dtype == jnp.bfloat16
    ref = x.astype(jnp.float32) / jnp.sqrt(jnp.mean(x.astype(jnp.float32) ** 2, -1, keepdims=True) + 1e-6)
    assert_allclose(y.astype(jnp.float32), ref, "bf16_elementwise")


def test_l2_normalize():
    x = jax.random.normal(jax.random.key(2), (4, 6))
    assert_allclose(jnp.linalg.norm(l2_normalize(x), axis=-1), 1.0, "float32_relative")


def test_short_conv_matches_lax_conv_and_streams():
    conv = ShortConv(6, 4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 11, 6))
    y, state = conv(x)
    # independent reference: a causal depthwise convolution with lax
    ref = jax.lax.conv_general_dilated(
        x, conv.kernel[...][:, None, :], window_strides=(1,), padding=[(3, 0)],
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=6)
    assert_allclose(y, ref, "float32_fine")
    assert_allclose(state, x[:, -3:], "exact")
    # split into three calls carrying the state
    parts, s = [], None
    for a, b in ((0, 5), (5, 6), (6, 11)):
        out, s = conv(x[:, a:b], s)
        parts.append(out)
    assert_allclose(jnp.concatenate(parts, 1), y, "float32_fine")


def test_rope_scores_depend_on_relative_position_only():
    q = jax.random.normal(jax.random.key(4), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.key(5), (1, 1, 1, 8))
    score = lambda i, j: jnp.sum(apply_rope(q, jnp.array([i])) * apply_rope(k, jnp.array([j])))
    assert_allclose(score(3, 1), score(10, 8), "float32_relative")
    assert_allclose(apply_rope(q, jnp.array([0])), q, "exact")


def test_gates_ranges_and_initial_values():
    names = ("log_decay", "beta", "theta", "alpha", "eta")
    gates = Gates(8, 3, names, rngs=nnx.Rngs(0), std=0.0, param_dtype=jnp.float32)
    out = gates(jax.random.normal(jax.random.key(6), (2, 5, 8)))
    for name in names:
        assert out[name].shape == (2, 5, 3) and out[name].dtype == jnp.float32
        expected = GATES[name].activation(jnp.float32(GATES[name].bias))
        assert_allclose(out[name], expected, "float32_tight")
    assert float(out["log_decay"].max()) <= 0
    assert Gates(8, 3, (), rngs=nnx.Rngs(0), std=0.02, param_dtype=jnp.float32)(jnp.ones((1, 2, 8))) == {}
    with pytest.raises(ValueError, match="no gate parametrisation"):
        Gates(8, 3, ("bogus",), rngs=nnx.Rngs(0), std=0.02, param_dtype=jnp.float32)
