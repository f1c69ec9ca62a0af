"""SwiGLU feed-forward block and the shared dense-layer factory."""

from __future__ import annotations

import jax
from flax import nnx

from mc_jax.parallel.rules import constrain
from mc_jax.typing import Array, Float


def dense(din: int, dout: int, *, rngs: nnx.Rngs, std: float, dtype, param_dtype, bias: bool = False) -> nnx.Linear:
    """A linear layer with normal(std) weights, float32 (``param_dtype``) params and ``dtype`` compute."""
    return nnx.Linear(
        din, dout, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        kernel_init=nnx.initializers.normal(std), bias_init=nnx.initializers.zeros,
    )


class SwiGLU(nnx.Module):
    """``W_down (silu(x W_gate) * x W_up)``."""

    def __init__(self, d: int, hidden: int, *, rngs: nnx.Rngs, std: float, out_std: float, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.gate = dense(d, hidden, std=std, **kw)
        self.up = dense(d, hidden, std=std, **kw)
        self.down = dense(hidden, d, std=out_std, **kw)

    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
        hidden = constrain(jax.nn.silu(self.gate(x)) * self.up(x), ("batch", "seq", "mlp"))  # TP: units on tensor
        return self.down(hidden)


__all__ = ["SwiGLU", "dense"]
