"""Residual blocks and the table of token-mixer kinds.

Every mixer has the same interface, so a block, a stack and the decoder treat them alike:
    mixer(x [b, t, d], cache | None) -> (y [b, t, d], new cache | None),    mixer.init_cache(batch, max_len)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import nnx

from mc_jax.config import MIXER_KINDS, ModelConfig
from mc_jax.layers.attention import Attention
from mc_jax.layers.mc_mixer import MCMixer
from mc_jax.layers.mlp import SwiGLU
from mc_jax.layers.norms import RMSNorm
from mc_jax.parallel.rules import constrain
from mc_jax.typing import Array, Float


def _attention(config: ModelConfig, window: int | None, rngs: nnx.Rngs) -> Attention:
    return Attention(
        config.d_model, config.num_heads, window=window, rope_theta=config.mixer.rope_theta, rngs=rngs,
        std=config.init_std, out_std=config.init_std / (2 * config.num_layers) ** 0.5,
        dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype),
    )


MIXERS: dict[str, Callable[[ModelConfig, nnx.Rngs], nnx.Module]] = {
    "mc": lambda c, rngs: MCMixer(c, "mc", rngs=rngs),
    "none": lambda c, rngs: MCMixer(c, "none", rngs=rngs),
    "attention": lambda c, rngs: _attention(c, None, rngs),
    "sliding_window": lambda c, rngs: _attention(c, c.mixer.window, rngs),
}
assert set(MIXERS) == set(MIXER_KINDS)


def make_mixer(kind: str, config: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    if kind not in MIXERS:
        raise ValueError(f"unknown mixer kind {kind!r}; choose one of {sorted(MIXERS)}")
    return MIXERS[kind](config, rngs)


class Block(nnx.Module):
    """``x + mixer(norm(x))`` then ``x + SwiGLU(norm(x))`` (the second only with ``config.mlp``)."""

    def __init__(self, config: ModelConfig, kind: str, *, rngs: nnx.Rngs):
        dtype, pdtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        d = config.d_model
        self.kind = kind
        self.mixer_norm = RMSNorm((d,), eps=config.norm_eps, dtype=dtype, param_dtype=pdtype)
        self.mixer = make_mixer(kind, config, rngs=rngs)
        self.mlp_norm = RMSNorm((d,), eps=config.norm_eps, dtype=dtype, param_dtype=pdtype) if config.mlp else None
        self.mlp = SwiGLU(d, config.hidden_dim, rngs=rngs, std=config.init_std,
                          out_std=config.init_std / (2 * config.num_layers) ** 0.5, dtype=dtype,
                          param_dtype=pdtype) if config.mlp else None

    def init_cache(self, batch: int, max_len: int) -> Any:
        return self.mixer.init_cache(batch, max_len)

    def __call__(self, x: Float[Array, "b t d"], cache: Any = None) -> tuple[Float[Array, "b t d"], Any]:
        x = constrain(x, ("batch", "seq", None))  # batch over (data, fsdp) under a mesh; a no-op without one
        h, cache = self.mixer(self.mixer_norm(x), cache)
        x = constrain(x + h, ("batch", "seq", None))
        if self.mlp is None:
            return x, cache
        return x + self.mlp(self.mlp_norm(x)), cache


class Unit(nnx.Module):
    """One repetition of ``config.layer_pattern``: a short tuple of blocks (the body of the layer scan)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.blocks = nnx.List([Block(config, kind, rngs=rngs) for kind in config.layer_pattern])

    def init_cache(self, batch: int, max_len: int) -> tuple:
        return tuple(block.init_cache(batch, max_len) for block in self.blocks)

    def __call__(
        self, x: Float[Array, "b t d"], caches: tuple | None = None
    ) -> tuple[Float[Array, "b t d"], tuple | None]:
        new = []
        for i, block in enumerate(self.blocks):
            x, c = block(x, None if caches is None else caches[i])
            new.append(c)
        return x, None if caches is None else tuple(new)
