"""Causal depthwise ("short") convolution with a streaming state."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mc_jax.typing import Array, Float


class ShortConv(nnx.Module):
    """``y_t = sum_{j < w} kernel[j] * x_{t - w + 1 + j}`` per channel (no bias), causal.

    The streaming state is the last ``w - 1`` inputs ``[b, w - 1, d]`` (zeros before the sequence starts), so
    ``conv(x[:, :s]) ++ conv(x[:, s:], state)`` equals ``conv(x)``.
    """

    def __init__(self, features: int, width: int, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        bound = 1.0 / width**0.5  # fan-in of a depthwise kernel is its width
        init = nnx.initializers.uniform(2 * bound)
        self.kernel = nnx.Param(init(rngs.params(), (width, features), param_dtype) - bound)
        self.width = width
        self.dtype = dtype

    def init_state(self, batch: int, dtype=jnp.float32) -> Float[Array, "b w1 d"]:
        return jnp.zeros((batch, self.width - 1, self.kernel.shape[1]), dtype)

    def __call__(
        self, x: Float[Array, "b t d"], state: Float[Array, "b w1 d"] | None = None
    ) -> tuple[Float[Array, "b t d"], Float[Array, "b w1 d"]]:
        """Returns ``(y [b, t, d], new state [b, w - 1, d])``."""
        dtype = self.dtype or x.dtype
        b, t, _ = x.shape
        if state is None:
            state = self.init_state(b, dtype)
        padded = jnp.concatenate([state.astype(dtype), x.astype(dtype)], axis=1)  # [b, w - 1 + t, d]
        kernel = self.kernel[...].astype(dtype)
        y = sum(padded[:, j : j + t] * kernel[j] for j in range(self.width))
        return y, padded[:, t:]
