"""Default of ``python train.py``: one MC layer (linear memory, GRM over independent segments of 8 positions) against
the same layer without caching, on stacked MQAR (Zoology's "continuous" MQAR, :mod:`mc_jax.data.stacked_mqar`):
32 key-value pairs per sequence (L = 64) drawn from frozen unit-norm tables of 1024 keys x 1024 values, d_model 32,
one head, so the uncached layer holds 32 pairs in one 32 x 32 state. This is the tiny recall protocol of the
project's EVALUATION.md (section 7.1), which measured a stable ~2x gain for independent-segment caching.

The layer is bare normalised linear attention: identity q / k / v feature maps, no per-head output norm, no output
gate, no MLP sub-layer (``model.mlp=false``), a width-1 short convolution (a per-channel scale). With the full
GLA-style block (``train_token_mqar``'s layer) the cached model stayed at chance on seed 2 (of 0-2);
every run is listed in docs/recall_experiments.md.

Measured on the 2-core CPU (1500 steps x 64 sequences, 2.5-3.5 min per model with another run sharing the cores),
held-out accuracy on 512 sequences, caching vs the same layer without: seed 0 44.0% vs 20.2%, seed 1 45.6% vs
20.1%, seed 2 45.7% vs 21.4%, seed 3 44.9% vs 20.9% (2.14-2.26x). Zeroing the trained router (``u_proj``, so every
memory gets the same weight) at test time drops the cached model to the uncached level (20.1-21.2%): the gain is
the GRM gating.
"""

from mc_jax.config import MixerConfig, ModelConfig
from mc_jax.train.config import RunConfig, TaskConfig, TrainConfig

CONFIG = RunConfig(
    model=ModelConfig(
        inputs="pair_table",
        vocab_size=1024,
        num_keys=1024,
        d_model=32,
        num_layers=1,
        num_heads=1,
        init_std=0.1,
        mlp=False,
        scan_layers=False,
        mixer=MixerConfig(kind="mc", memory="linear", aggregation="grm", segmentation="constant", segment_size=8,
                          init="independent", conv_width=1, feature_map="identity", value_map="identity",
                          output_norm=False, output_gate=False),
    ),
    train=TrainConfig(
        steps=1500,
        lr=3e-3,
        warmup=100,
        min_lr_ratio=0.1,
        weight_decay=0.0,
        batch_size=64,
        eval_every=500,
        ckpt_every=500,
        out_dir="runs/tiny_mqar",
        seed=0,
        baseline="none,attention",
        task=TaskConfig(kind="stacked_mqar", seq_len=64, vocab_size=1024, num_keys=1024, num_kv_pairs=32,
                        eval_examples=512),
    ),
)
