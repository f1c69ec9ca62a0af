"""Base memories: a small table of strategies over two families (linear state, deep MLP state).

Each memory defines which per-token gates it reads (``[b, t, h]`` arrays in ``gates``), their identity values (used
for defaults and to pad a sequence with identity steps) and how its state is initialised, updated and read.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from mc_jax.ops.memories import deep, linear, swla
from mc_jax.ops.utils import state_dtype
from mc_jax.typing import Array, PyTree

# Identity value of every gate: a padded token with these gates (and k = 0) leaves every state unchanged.
IDENTITY_GATES = {"log_decay": 0.0, "beta": 0.0, "theta": 0.0, "alpha": 0.0, "eta": 1.0, "write": 0.0,
                  "beta_prev": 0.0, "lam": 0.0}


@dataclass(frozen=True)
class MemorySpec:
    name: str
    family: str  # "linear" | "deep"
    required_gates: tuple[str, ...]
    optional_gates: tuple[str, ...]  # default to their identity value
    loss: str | None = None  # deep memories: "dla" | "titans"
    momentum: bool = False
    window: int = 1  # tokens a write covers: 2 for SWLA (state: matrix + the previous token, memories/swla.py)

    @property
    def gate_names(self) -> tuple[str, ...]:
        return self.required_gates + self.optional_gates


MEMORIES: dict[str, MemorySpec] = {
    "linear": MemorySpec("linear", "linear", (), ()),
    "gated_linear": MemorySpec("gated_linear", "linear", ("log_decay",), ()),
    "delta": MemorySpec("delta", "linear", ("beta",), ("log_decay",)),
    "swla": MemorySpec("swla", "linear", ("beta_prev", "lam"), ("log_decay",), window=2),
    "dla": MemorySpec("dla", "deep", ("theta",), ("alpha",), loss="dla"),
    "titans": MemorySpec("titans", "deep", ("theta", "eta"), ("alpha",), loss="titans", momentum=True),
}


def get_memory(name: str) -> MemorySpec:
    if name not in MEMORIES:
        raise ValueError(f"unknown memory {name!r}; choose one of {sorted(MEMORIES)}")
    return MEMORIES[name]


def complete_gates(spec: MemorySpec, gates: dict[str, Array] | None, shape: tuple[int, int, int]) -> dict[str, Array]:
    """Check the user's gates against ``spec`` and fill the optional ones with their identity value.

    The result always holds ``log_decay`` for linear memories (zeros for ``linear``), ``beta`` only for ``delta``,
    ``beta_prev`` and ``lam`` for ``swla``, and ``theta``, ``alpha``, ``write`` (and ``eta`` for Titans) for deep memories.
    """
    gates = dict(gates or {})
    unknown = set(gates) - set(spec.gate_names)
    if unknown:
        allowed = list(spec.gate_names) or "none"
        raise ValueError(f"memory {spec.name!r} does not use gates {sorted(unknown)}; it takes {allowed}")
    missing = [g for g in spec.required_gates if g not in gates]
    if missing:
        raise ValueError(f"memory {spec.name!r} needs gates {missing} (per-token arrays of shape [B, T, H] = {shape})")
    for name, g in gates.items():
        if jnp.shape(g) != shape:
            raise ValueError(f"gate {name!r} has shape {jnp.shape(g)}; expected [B, T, H] = {shape}")
    out = {name: jnp.asarray(g) for name, g in gates.items()}
    if spec.family == "linear":
        out.setdefault("log_decay", jnp.zeros(shape, state_dtype()))
    else:
        out.setdefault("alpha", jnp.zeros(shape, state_dtype()))
        out["write"] = jnp.ones(shape, state_dtype())
    return out


def initial_state(spec: MemorySpec, params: PyTree | None, batch: int, heads: int, dk: int, dv: int) -> PyTree:
    """The memory's initial state with a leading batch axis (float32, or float64 under x64)."""
    sd = state_dtype()
    if spec.family == "linear":
        if params is None:
            matrix = jnp.zeros((batch, heads, dk, dv), sd)
            return swla.initial_state(matrix) if spec.window == 2 else matrix
        params = jnp.asarray(params)
        if params.shape not in ((heads, dk, dv), (batch, heads, dk, dv)):
            raise ValueError(
                f"params for memory {spec.name!r} is the initial state [B, H, Dk, Dv] = {(batch, heads, dk, dv)} "
                f"(or [H, Dk, Dv]); got shape {params.shape}"
            )
        matrix = jnp.broadcast_to(params, (batch, heads, dk, dv)).astype(sd)
        return swla.initial_state(matrix) if spec.window == 2 else matrix
    if params is None:
        raise ValueError(
            f"memory {spec.name!r} needs params: the initial MLP weights {{'W1': [H, D, E*D], 'W2': [H, E*D, D]}} "
            "(a zero initialisation would never learn: every gradient would vanish)"
        )
    if not isinstance(params, dict) or set(params) != {"W1", "W2"}:
        raise ValueError(f"params for memory {spec.name!r} must be a dict with keys 'W1' and 'W2'")
    w1, w2 = jnp.asarray(params["W1"]), jnp.asarray(params["W2"])
    if dk != dv:
        raise ValueError(f"memory {spec.name!r} needs Dk == Dv (the MLP maps keys to values); got {dk} and {dv}")
    if w1.ndim not in (3, 4) or w1.shape[-3:-1] != (heads, dk) or w2.shape[-3:] != (heads, w1.shape[-1], dk):
        raise ValueError(
            f"params W1 must be [H, D, F] and W2 [H, F, D] with H={heads}, D={dk} (optionally a leading batch axis); "
            f"got W1 {w1.shape}, W2 {w2.shape}"
        )
    if w1.ndim == 4 and w1.shape[0] != batch or w2.ndim != w1.ndim:
        raise ValueError(f"batched params must have leading axis B={batch} on both W1 and W2")
    f = w1.shape[-1]
    weights = {
        "W1": jnp.broadcast_to(w1, (batch, heads, dk, f)).astype(sd),
        "W2": jnp.broadcast_to(w2, (batch, heads, f, dk)).astype(sd),
    }
    state = {"weights": weights, "reference": weights}
    if spec.momentum:
        state["momentum"] = jax.tree.map(jnp.zeros_like, weights)
    return state


def state_pass(spec: MemorySpec, k, v, gates, state, chunk: int, valid):
    """Run the memory over ``[r, t, h, *]`` tokens (``t`` a multiple of ``chunk``) from ``state``.

    Returns ``(chunk_data, final_state)``; ``chunk_data`` is whatever :func:`read_online` needs.
    """
    if spec.window == 2:
        return swla.state_pass(k, v, gates, state, chunk, valid)
    if spec.family == "linear":
        starts, u, final = linear.state_pass(k, v, gates, state, chunk, valid)
        return (starts, u), final
    return deep.state_pass(k, v, gates, state, chunk, valid, loss=spec.loss, momentum=spec.momentum)


def read_online(spec: MemorySpec, q, k, gates, chunk_data, chunk: int):
    """Online read-out of every token of a :func:`state_pass`, ``[r, t, h, dv]``."""
    if spec.window == 2:
        return swla.read(q, k, gates, chunk_data, chunk)
    if spec.family == "linear":
        return linear.read(q, k, gates, chunk_data[0], chunk_data[1], chunk)
    return deep.read(q, chunk_data, chunk)


def readable(spec: MemorySpec, state: PyTree) -> PyTree:
    """The part of a state that a read uses (linear: the matrix; deep: the weights)."""
    if spec.window == 2:
        return state["S"]
    return state if spec.family == "linear" else state["weights"]


def read_state(spec: MemorySpec, memory: PyTree, x: Array) -> Array:
    """Read cached memories: ``memory`` leaves ``[..., dk, dv]`` (or MLP weights), ``x [..., c, dk]``."""
    if spec.family == "linear":
        return linear.read_state(memory, x)
    return deep.mlp(memory, x)


__all__ = [
    "IDENTITY_GATES",
    "MEMORIES",
    "MemorySpec",
    "complete_gates",
    "get_memory",
    "initial_state",
    "read_online",
    "read_state",
    "readable",
    "state_pass",
]
