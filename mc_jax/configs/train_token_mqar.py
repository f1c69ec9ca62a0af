"""Token MQAR (``python train.py --preset train_token_mqar``; the default of ``train.py`` before the stacked-MQAR
protocol of ``train_tiny_mqar``): a tiny MC model (the full GLA-style block: linear memory + GRM,
independent segments of 8 tokens, 2 layers, d_model 64, 2 heads) trained on token MQAR (Zoology format, L = 64,
8 key-value pairs, vocabulary 256, random filler tokens) on a CPU in a few minutes, then the same model without
caching (mixer ``none``) trained the same way (same seed, data, steps and learning rate) for comparison.

Current figures (the ``e2`` experiment, ``python -m mc_jax.experiments e2``, 2026-12-01, with the output gate's
bias ``mixer.gate_bias = 2.0``, the default since then; 1600 steps x 32 sequences, lr 3e-3 (the experiment's
rate; this preset's own is 1e-2), seeds 0 / 1): with
caching 99.9 / 99.5%, without caching 99.0 / 98.4%; softmax attention (``model.mixer.kind=attention``) 11.9 / 11.9%
at this lr and 13.5 / 13.7% at its swept rate 1e-3: in 1600 steps it does not leave its plateau (likely
because it has no short convolution and must learn to pair each key with its value across its two layers; not
tested). Trained 4x longer (6400 steps, lr 1e-3, E2's ``attention_4x``) it reaches 99.7 / 96.5%: the ceiling is
attention at 4x the tokens. So with the open gate the uncached model no longer stalls here: at 8 pairs the task
does not separate the two; the stacked-MQAR protocol of
``train_tiny_mqar`` (32 pairs) is where caching's gain shows.

Earlier figures, with the bias-free gate (lr 1e-2, seeds 0 / 1 / 2 / 3, after the XLA:CPU work-around of
mc_jax/_xla_cpu.py): with caching 98.2 / 99.0 / 95.5 / 92.3%; without caching 57.0 / 7.7 / 83.9 / 55.1%: the
uncached model's plateau decided the gap, so its sign was stable and its size was not. Before the work-around:
98.8 / 96.6 / 76.2 / 99.2% vs 91.9 / 78.4 / 6.4 / 46.5%; with 16 sequences per step 77.5 / 87.3 / 84.3 / 88.8% vs
49.7 / 1.4 / 93.6 / 2.4%.
Variants tried and dropped (2 seeds each, a seed where the cached model also stalled at chance): 16 pairs (lr 1e-2
and 3e-3), key_dim 8 or 16, L = 128.
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
        steps=1600,
        lr=1e-2,
        warmup=100,
        batch_size=32,
        eval_every=400,
        ckpt_every=400,
        out_dir="runs/token_mqar",
        seed=0,
        baseline="none",
        task=TaskConfig(kind="mqar", seq_len=64, vocab_size=256, num_kv_pairs=8, eval_examples=512),
    ),
)
