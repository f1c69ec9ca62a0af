"""The paper's 1.3B reference shape: 18 blocks, dim 2048, 8 heads (head dim 256), vocab 32000.

Titans + GRM with constant segments, bf16 compute. SwiGLU hidden 5632 (8/3 d rounded up to a multiple of 256).
"""

from mc_jax.config import MixerConfig, ModelConfig

CONFIG = ModelConfig(
    vocab_size=32000,
    d_model=2048,
    num_layers=18,
    num_heads=8,
    mlp_hidden=5632,
    tie_embeddings=False,
    dtype="bfloat16",
    remat=True,
    mixer=MixerConfig(kind="mc", memory="titans", aggregation="grm", segmentation="constant", segment_size=256,
                      chunk_size=16),
)
