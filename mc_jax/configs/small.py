"""Small MC model for quick GPU runs / long CPU runs: Titans + GRM, 6 layers, d_model 256."""

from mc_jax.config import MixerConfig, ModelConfig

CONFIG = ModelConfig(
    vocab_size=32000,
    d_model=256,
    num_layers=6,
    num_heads=4,
    mixer=MixerConfig(kind="mc", memory="titans", aggregation="grm", segmentation="constant", segment_size=256,
                      chunk_size=16),
)
