"""Shared tiny shapes for the model tests (d_model 32, 2 heads, vocab 50)."""

import jax
import jax.numpy as jnp

from mc_jax.config import MixerConfig, ModelConfig

VOCAB = 50


def tiny(num_layers: int = 1, pattern=(), scan_layers: bool = True, **mixer) -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, d_model=32, num_layers=num_layers, num_heads=2, pattern=pattern,
                       scan_layers=scan_layers, mixer=MixerConfig(**mixer))


def tokens(batch: int, length: int, seed: int = 0) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB, dtype=jnp.int32)
