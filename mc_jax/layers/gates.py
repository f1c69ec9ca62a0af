"""Per-head gates of the base memories: a table of parametrisations over one shared projection.

Each gate is ``activation(x W + b)`` per token and head, computed in float32. The bias sets the gate's value at
initialisation (the weights start small), e.g. a decay of about 0.95 and a small forgetting rate.

    gate        range      activation      initial value
    log_decay   (-inf, 0]  -softplus       log 0.953  (gated_linear; optional for delta)
    beta        (0, 1)     sigmoid         0.5        (delta write strength)
    theta       (0, 1)     sigmoid         0.12       (deep memory learning rate)
    alpha       (0, 1)     sigmoid         0.0067     (deep memory forgetting)
    eta         (0, 1)     sigmoid         0.88       (Titans momentum decay)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from mc_jax.layers.mlp import dense
from mc_jax.typing import Array, Float


@dataclass(frozen=True)
class GateSpec:
    activation: Callable[[Array], Array]
    bias: float


def _neg_softplus(z: Array) -> Array:
    return -jax.nn.softplus(z)


GATES: dict[str, GateSpec] = {
    "log_decay": GateSpec(_neg_softplus, -3.0),
    "beta": GateSpec(jax.nn.sigmoid, 0.0),
    "theta": GateSpec(jax.nn.sigmoid, -2.0),
    "alpha": GateSpec(jax.nn.sigmoid, -5.0),
    "eta": GateSpec(jax.nn.sigmoid, 2.0),
}


class Gates(nnx.Module):
    """All gates of a memory from one float32 projection ``d -> len(names) * heads`` (with bias)."""

    def __init__(self, d: int, heads: int, names: tuple[str, ...], *, rngs: nnx.Rngs, std: float, param_dtype):
        unknown = [n for n in names if n not in GATES]
        if unknown:
            raise ValueError(f"no gate parametrisation for {unknown}; known: {sorted(GATES)}")
        self.names = tuple(names)
        self.heads = heads
        self.proj = dense(d, len(names) * heads, rngs=rngs, std=std, dtype=jnp.float32, param_dtype=param_dtype,
                          bias=True) if names else None
        if names:
            bias = jnp.repeat(jnp.asarray([GATES[n].bias for n in names], param_dtype), heads)
            self.proj.bias[...] = bias

    def __call__(self, x: Float[Array, "b t d"]) -> dict[str, Float[Array, "b t h"]]:
        if not self.names:
            return {}
        b, t, _ = x.shape
        z = self.proj(x.astype(jnp.float32)).reshape(b, t, len(self.names), self.heads)
        return {name: GATES[name].activation(z[:, :, i]) for i, name in enumerate(self.names)}
