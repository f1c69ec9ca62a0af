"""Tiny MC model that trains in minutes on a CPU (byte-level vocabulary, 2 layers, d_model 64)."""

from mc_jax.config import MixerConfig, ModelConfig

CONFIG = ModelConfig(
    vocab_size=256,
    d_model=64,
    num_layers=2,
    num_heads=2,
    mixer=MixerConfig(kind="mc", memory="gated_linear", aggregation="grm", segmentation="constant", segment_size=32),
)
