"""The paper's 760M reference shape: 24 blocks, dim 1536, 16 heads (head dim 96), vocab 32000.

Titans + GRM with constant segments, bf16 compute. SwiGLU hidden 4096 (= 8/3 d). Swap the mixer with overrides,
e.g. ``mixer.kind=attention`` for the Transformer++ baseline at the same shape.
"""

from mc_jax.config import MixerConfig, ModelConfig

CONFIG = ModelConfig(
    vocab_size=32000,
    d_model=1536,
    num_layers=24,
    num_heads=16,
    mlp_hidden=4096,
    tie_embeddings=False,
    dtype="bfloat16",
    remat=True,
    mixer=MixerConfig(kind="mc", memory="titans", aggregation="grm", segmentation="constant", segment_size=256,
                      chunk_size=16),
)
