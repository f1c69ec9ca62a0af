"""Stacked MQAR (pairs given as frozen embeddings, :mod:`mc_jax.data.stacked_mqar`): one MC layer over a linear
memory with GRM over independent segments of 8 pairs, against the same layer without caching."""

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
        scan_layers=False,
        mixer=MixerConfig(kind="mc", memory="linear", aggregation="grm", segmentation="constant", segment_size=8,
                          init="independent"),
    ),
    train=TrainConfig(
        steps=1500,
        lr=3e-3,
        warmup=100,
        batch_size=64,
        eval_every=500,
        ckpt_every=500,
        out_dir="runs/stacked_mqar",
        seed=0,
        baseline="none",
        task=TaskConfig(kind="stacked_mqar", seq_len=64, vocab_size=1024, num_keys=1024, num_kv_pairs=32,
                        eval_examples=512),
    ),
)
