"""Per-head gates of the base memories: a table of parametrisations over one shared projection.

Each gate is ``activation(x W + b)`` per token and head, computed in float32. The bias sets the gate's value at
initialisation (the weights start small), e.g. a decay of about 0.95 and a small forgetting rate.

    gate        range      activation      initial value
    log_decay   (-inf, 0]  -softplus       log 0.953  (gated_linear; optional for delta, swla)
    beta        (0, 1)     sigmoid         0.5        (delta write strength)
    theta       (0, 1)     sigmoid         0.12       (deep memory learning rate)
    alpha       (0, 1)     sigmoid         0.0067     (deep memory forgetting)
    eta         (0, 1)     sigmoid         0.88       (Titans momentum decay)
    beta_prev   (0, 1)     sigmoid         0.5        (swla: weight of the previous token's pair, b_t)
    lam         (0, 1)     sigmoid         0.5        (swla: weight of the current token's pair, l_t)

Per-memory initial values (:func:`memory_biases`) override the table. Titans' ``theta`` starts at 0.0142 (heads
up to 32 wide), DLA's at 0.12 (heads up to 32 wide); both shrink as ``32 / D`` for wider heads. With
momentum the inner optimiser's steady step is ``theta / (1 - eta)``, and the table's 0.12 with ``eta = 0.88`` gave
1.0, above the stability limit of gradient descent on ``|M(k) - v|^2`` (the curvature in ``W1`` alone is
``2 |gelu(W2 k)|^2 ~ E / 2`` at initialisation): the memory's weights grew geometrically along a sequence and the
uncached Titans layer of the default preset was non-finite at step 1 (issue 16; the per-token recurrence diverged
too, so no chunk form could help). 0.0142 = 0.12 (1 - 0.88) gives Titans DLA's effective step; measured on the
default preset's uncached layer (3 initialisations x 4 batches x 64 sequences): theta_0 = 0.12 / 0.06 / 0.03 /
0.0142 left 768 / 542 / 3 / 0 sequences non-finite (tests/models/test_init_finite.py is the regression test).
Wider heads need a smaller step: with l2-normalised keys the values' norm grows as sqrt(D) at a fixed
per-coordinate scale, and the error ``M(k) - v`` drives ``W1`` in proportion, which raises the curvature in ``W2``
(the two layers grow each other). The paper_1_3b preset (D = 256, reduced as in the test) was non-finite on
every sequence at 0.0142 and on some at 0.0071, so beyond 32 the step scales as ``32 / D`` -- the per-coordinate
mean of the squared error, as TTT-style implementations use it. DLA has the same inner optimiser without momentum
and the same scaling: at 0.12 the uncached DLA layer of that reduced paper_1_3b preset (D = 256, 512 tokens) was
finite only while its second layer saw the first one's inputs; once the output gate starts open
(``mixer.gate_bias=2.0``) the second layer's inputs are the first one's read and its memory diverged from position
~400 (float32 and bfloat16); at ``0.12 x 32 / 256`` it stays finite.
"""

from __future__ import annotations

import math
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
    "beta_prev": GateSpec(jax.nn.sigmoid, 0.0),
    "lam": GateSpec(jax.nn.sigmoid, 0.0),
}


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


DEEP_REFERENCE_DIM = 32  # head dim up to which the deep memories keep the table's inner step (module docstring)


def memory_biases(memory: str, head_dim: int) -> dict[str, float]:
    """Initial biases that differ from the table for ``memory`` with per-head width ``head_dim``.

    DLA: ``theta_0 = theta min(1, 32 / D)``; Titans: ``theta_0 = theta (1 - eta_0) min(1, 32 / D)``, so that its
    effective step ``theta_0 / (1 - eta_0)`` is DLA's. Both shrink as ``1 / D`` beyond 32 (the module docstring says
    why).
    """
    if memory not in ("dla", "titans"):
        return {}
    step = _sigmoid(GATES["theta"].bias)
    if memory == "titans":  # with momentum the steady step is theta / (1 - eta): keep DLA's
        step *= 1.0 - _sigmoid(GATES["eta"].bias)
    return {"theta": _logit(step * min(1.0, DEEP_REFERENCE_DIM / head_dim))}


class Gates(nnx.Module):
    """All gates of a memory from one float32 projection ``d -> len(names) * heads`` (with bias); ``memory`` and
    ``head_dim`` pick per-memory initial values (:func:`memory_biases`)."""

    def __init__(self, d: int, heads: int, names: tuple[str, ...], *, rngs: nnx.Rngs, std: float, param_dtype,
                 memory: str = "", head_dim: int = 1):
        unknown = [n for n in names if n not in GATES]
        if unknown:
            raise ValueError(f"no gate parametrisation for {unknown}; known: {sorted(GATES)}")
        self.names = tuple(names)
        self.heads = heads
        self.proj = dense(d, len(names) * heads, rngs=rngs, std=std, dtype=jnp.float32, param_dtype=param_dtype,
                          bias=True) if names else None
        if names:
            override = memory_biases(memory, head_dim)
            bias = jnp.repeat(jnp.asarray([override.get(n, GATES[n].bias) for n in names], param_dtype), heads)
            self.proj.bias[...] = bias

    def __call__(self, x: Float[Array, "b t d"]) -> dict[str, Float[Array, "b t h"]]:
        if not self.names:
            return {}
        b, t, _ = x.shape
        z = self.proj(x.astype(jnp.float32)).reshape(b, t, len(self.names), self.heads)
        return {name: GATES[name].activation(z[:, :, i]) for i, name in enumerate(self.names)}
