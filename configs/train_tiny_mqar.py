"""Default of ``python train.py``: a tiny MC model (linear memory + GRM, independent segments of 8 tokens) trained
on token MQAR (Zoology format, L = 64, 8 key-value pairs, vocabulary 256) on a CPU in a couple of minutes, then the
same model without caching (mixer ``none``) trained the same way for comparison.
"""

from mc_jax.config import MixerConfig, ModelConfig
from mc_jax.train.config import RunConfig, TaskConfig, TrainConfig

CONFIG = RunConfig(
    model=ModelConfig(
        vocab_size=256,
        d_model=64,
        num_layers=2,
        num_heads=2,
        scan_layers=False,
        mixer=MixerConfig(kind="mc", memory="linear", aggregation="grm", segmentation="constant", segment_size=8,
                          init="independent"),
    ),
    train=TrainConfig(
        steps=1200,
        lr=3e-3,
        warmup=100,
        batch_size=32,
        eval_every=400,
        ckpt_every=400,
        out_dir="runs/tiny_mqar",
        seed=0,
        baseline="none",
        task=TaskConfig(kind="mqar", seq_len=64, vocab_size=256, num_kv_pairs=8, eval_examples=512),
    ),
)
