"""Presets build abstractly (``nnx.eval_shape``: no memory, no compute) with the parameter counts of a hand formula."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from mc_jax.config import ModelConfig
from mc_jax.configs_util import apply_overrides, load_preset
from mc_jax.models.lm import abstract_model, count_params

PRESETS = ("tiny", "small", "paper_760m", "paper_1_3b")


def hand_count(cfg: ModelConfig) -> int:
    """Parameters by hand: embeddings, final norm, (untied head), and per layer two norms, SwiGLU and the mixer."""
    d, h, f, m = cfg.d_model, cfg.num_heads, cfg.hidden_dim, cfg.mixer
    dk, dv = cfg.key_dim, cfg.value_dim
    attention = 4 * d * d
    gates = len(m.gate_names)

    def recurrent(cached: bool) -> int:
        n = d * h * (2 * dk + dv)  # W_q, W_k, W_v
        n += m.conv_width * h * (2 * dk + dv)  # depthwise convolutions
        n += d * h * dk if cached and m.aggregation != "residual" else 0  # W_u
        n += gates * h * (d + 1)  # gate projections with bias
        n += h * dv + d * h * dv + h * dv * d  # output norm, W_gate, W_o
        n += h * dv if m.gate_bias is not None else 0  # the output gate's learned bias (mixer.gate_bias)
        n += 2 * h * dk * m.expansion * dk if m.deep else 0  # W1, W2 of the deep memory
        return n

    mixers = {"mc": recurrent(True), "none": recurrent(False), "attention": attention, "sliding_window": attention}
    per_layer = [mixers[kind] + 2 * d + 3 * d * f for kind in cfg.layer_kinds]
    return sum(per_layer) + cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2) + d


@pytest.mark.parametrize("name", PRESETS)
def test_preset_parameter_counts(name):
    cfg = load_preset(name)
    for variant in (cfg, apply_overrides(cfg, ["mixer.kind=attention"]), apply_overrides(cfg, ["mixer.kind=none"])):
        model = abstract_model(variant)
        leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
        assert all(isinstance(x, jax.ShapeDtypeStruct) and x.dtype == jnp.float32 for x in leaves)
        assert count_params(model) == hand_count(variant)


def test_reference_shapes():
    big = load_preset("paper_760m")
    assert (big.num_layers, big.d_model, big.num_heads, big.vocab_size) == (24, 1536, 16, 32000)
    huge = load_preset("paper_1_3b")
    assert (huge.num_layers, huge.d_model, huge.num_heads, huge.vocab_size) == (18, 2048, 8, 32000)
    # the measured sizes (Titans + GRM mixer; see the preset docstrings)
    assert count_params(abstract_model(big)) == 921_700_992
    assert count_params(abstract_model(huge)) == 1_283_885_488
