"""RMSNorm (computed in float32) and the per-head l2 normalisation of queries and keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mc_jax.typing import Array, Float


def l2_normalize(x: Float[Array, "... d"], eps: float = 1e-6) -> Float[Array, "... d"]:
    """``x / ||x||`` over the last axis (computed in float32, returned in ``x.dtype``)."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


class RMSNorm(nnx.Module):
    """``y = x / rms(x) * scale`` over the last axis; ``scale`` has ``shape`` (its trailing axes match ``x``'s).

    ``shape = (d,)`` is the usual norm; ``shape = (h, dv)`` on ``[b, t, h, dv]`` is a per-head norm with a scale per
    head. Statistics are float32; the result has ``dtype`` (the input's when ``None``).
    """

    def __init__(self, shape: tuple[int, ...], *, eps: float = 1e-6, dtype=None, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones(shape, param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: Float[Array, "..."]) -> Float[Array, "..."]:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype or x.dtype)
