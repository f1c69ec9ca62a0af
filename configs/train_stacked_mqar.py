"""Stacked MQAR (the pairs given as frozen unit-norm embeddings, :mod:`mc_jax.data.stacked_mqar`; Zoology's
"continuous" MQAR): one MC layer (linear memory, GRM over independent segments of 8 positions) against the same layer
without caching, d_model 32, one head (a 32 x 32 state), 32 pairs per sequence (L = 64), 1024 keys x 1024 values.

    python train.py --preset train_stacked_mqar                     # both models, ~4 min each on a 2-core CPU
    python eval.py runs/stacked_mqar/main                           # accuracy by the position of the queried pair

Choices (measured on the 2-core CPU, every run in docs/recall_experiments.md): a short convolution of width 1 (a
per-channel scale: wider ones mix neighbouring pairs into every query and key), init_std 0.1 (with the default 0.02
the cached model stayed near chance for 800-1500 steps at d_model 32), silu features (identity features left seed 1
at chance), and training sequences with 4 to 32 pairs (``min_kv_pairs``: the short ones give a strong signal early;
seeds 0 and 1 reached 12% by step 500; held-out sequences always have 32 pairs).

Measured (2000 steps x 64 sequences, held-out accuracy, caching vs the same layer without): seed 0 45.9% vs 27.0%;
seed 1 39.9% vs 32.7% (uncached run stopped at step 1500); seed 2 0.5% vs 26.8%: with initialisation seed 2 the
cached layer never leaves chance (at lr 1e-3, 3e-3 and 1e-2, with a zero router, and on data seed 0 too). Without
the curriculum, 3000 steps: 60.7% vs 48.1% (seed 0), 46.0% vs 41.0% (seed 1).
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
        scan_layers=False,
        mixer=MixerConfig(kind="mc", memory="linear", aggregation="grm", segmentation="constant", segment_size=8,
                          init="independent", conv_width=1),
    ),
    train=TrainConfig(
        steps=2000,
        lr=3e-3,
        warmup=100,
        batch_size=64,
        eval_every=500,
        ckpt_every=500,
        out_dir="runs/stacked_mqar",
        seed=0,
        baseline="none",
        task=TaskConfig(kind="stacked_mqar", seq_len=64, vocab_size=1024, num_keys=1024, num_kv_pairs=32,
                        min_kv_pairs=4, eval_examples=512),
    ),
)
