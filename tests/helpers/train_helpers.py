"""Tiny configs for the training tests (a few ms per step, a few seconds to compile)."""

from __future__ import annotations

from mc_jax.config import MixerConfig, ModelConfig
from mc_jax.configs_util import apply_overrides
from mc_jax.train.config import RunConfig, TaskConfig, TrainConfig

TINY = RunConfig(
    model=ModelConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=1, scan_layers=False,
                      mixer=MixerConfig(kind="mc", memory="linear", aggregation="grm", segment_size=8)),
    train=TrainConfig(steps=10, lr=1e-2, warmup=2, batch_size=4, eval_every=0, ckpt_every=5, keep=3, log_every=1,
                      baseline="", out_dir="unused", seed=0,
                      task=TaskConfig(kind="mqar", seq_len=16, vocab_size=32, num_kv_pairs=2, eval_examples=8)),
)


def tiny_config(*overrides: str) -> RunConfig:
    return apply_overrides(TINY, list(overrides))


# Stacked MQAR (pair-table model): kv=4 pairs (L=8) over 16 keys x 16 values, one mc layer with segments of 2 pairs.
STACKED = RunConfig(
    model=ModelConfig(inputs="pair_table", vocab_size=16, num_keys=16, d_model=16, num_layers=1, num_heads=1,
                      scan_layers=False,
                      mixer=MixerConfig(kind="mc", memory="linear", aggregation="grm", segment_size=2)),
    train=TrainConfig(steps=6, lr=1e-2, warmup=2, batch_size=4, eval_every=0, ckpt_every=3, keep=3, log_every=1,
                      baseline="", out_dir="unused", seed=0,
                      task=TaskConfig(kind="stacked_mqar", seq_len=8, vocab_size=16, num_keys=16, num_kv_pairs=4,
                                      eval_examples=8)),
)


def stacked_config(*overrides: str) -> RunConfig:
    return apply_overrides(STACKED, list(overrides))
