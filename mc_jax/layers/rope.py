"""Rotary position embedding (rotate-half convention)."""

from __future__ import annotations

import jax.numpy as jnp

from mc_jax.typing import Array, Float, Int


def apply_rope(
    x: Float[Array, "b t h d"], positions: Int[Array, " t"], theta: float = 10000.0
) -> Float[Array, "b t h d"]:
    """Rotate feature pairs ``(x[i], x[i + d/2])`` by ``position * theta^(-2i/d)`` (float32 angles)."""
    d = x.shape[-1]
    freq = theta ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2 / d)
    angle = positions.astype(jnp.float32)[:, None] * freq  # [t, d/2]
    cos, sin = jnp.cos(angle)[None, :, None, :], jnp.sin(angle)[None, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
