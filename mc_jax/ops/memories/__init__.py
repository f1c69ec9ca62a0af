"""Base memories: a small table of strategies over two families (linear state, deep MLP state).

Each memory defines which per-token gates it reads (``[b, t, h]`` arrays in ``gates``), their identity values (used
for defaults and to pad a sequence with identity steps) and its family (:mod:`.families`: how its state is
initialised, updated and read; the chunk forms are in :mod:`.linear` and :mod:`.deep`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from mc_jax.ops.memories.families import DEEP, FAMILIES, LINEAR, SWLA, DeepFamily, LinearFamily, SWLAFamily
from mc_jax.typing import Array, PyTree

# Identity value of every gate: a padded token with these gates (and k = 0) leaves every state unchanged.
IDENTITY_GATES = {"log_decay": 0.0, "beta": 0.0, "theta": 0.0, "alpha": 0.0, "eta": 1.0, "write": 0.0,
                  "beta_prev": 0.0, "lam": 0.0}

# The range of every gate (inclusive): ``log_decay`` = log of a decay in [0, 1] (``-inf``: a full reset), ``beta``
# the delta rule's write strength, ``theta`` the deep memory's inner learning rate (finite), ``alpha`` its
# forgetting, ``eta`` the Titans momentum decay, ``beta_prev`` / ``lam`` SWLA's window weights. Values outside (or NaN)
# are refused when the gates are concrete; under ``jit`` pass ``checked=True`` to :func:`~mc_jax.ops.memory_caching`
# and wrap with ``checkify``.
GATE_RANGES = {"log_decay": (-math.inf, 0.0), "beta": (0.0, 1.0), "theta": (0.0, math.inf), "alpha": (0.0, 1.0),
               "eta": (0.0, 1.0), "beta_prev": (0.0, 1.0), "lam": (0.0, 1.0)}


def _gate_ok(name: str, g, xp=jnp):
    """``xp``: ``np`` for concrete gates (so the check is not staged into an enclosing ``jit`` trace), ``jnp``."""
    lo, hi = GATE_RANGES[name]
    ok = (g >= lo) & (g <= hi)  # NaN fails both
    return ok & xp.isfinite(g) if name == "theta" else ok


def check_gate_values(gates: dict[str, Array], *, checked: bool = False) -> None:
    """Refuse gates outside :data:`GATE_RANGES`: a ``ValueError`` for concrete arrays; for traced ones (under
    ``jit``) a ``checkify.check`` when ``checked`` (the caller wraps with ``jax.experimental.checkify.checkify``)."""
    for name, g in gates.items():
        if name not in GATE_RANGES:
            continue
        lo, hi = GATE_RANGES[name]
        if not isinstance(g, jax.core.Tracer):
            values = np.asarray(g)
            bad = ~_gate_ok(name, values, np)
            if bad.any():
                first = values[bad].flat[0]
                raise ValueError(f"gate {name!r} must lie in [{lo}, {hi}]{' (finite)' if name == 'theta' else ''}; "
                                 f"{int(bad.sum())} of {values.size} values are outside, e.g. {first} (check the "
                                 "layer's gate activation)")
        elif checked:
            checkify.check(jnp.all(_gate_ok(name, g)), f"gate {name!r} has values outside [{lo}, {hi}] (or NaN)")


@dataclass(frozen=True)
class MemorySpec:
    name: str
    family: LinearFamily | DeepFamily | SWLAFamily
    required_gates: tuple[str, ...]
    optional_gates: tuple[str, ...]  # default to their identity value
    loss: str | None = None  # deep memories: "dla" | "titans"
    momentum: bool = False

    @property
    def gate_names(self) -> tuple[str, ...]:
        """Every gate the memory accepts: required, then optional."""
        return self.required_gates + self.optional_gates


MEMORIES: dict[str, MemorySpec] = {
    "linear": MemorySpec("linear", LINEAR, (), ()),
    "gated_linear": MemorySpec("gated_linear", LINEAR, ("log_decay",), ()),
    "delta": MemorySpec("delta", LINEAR, ("beta",), ("log_decay",)),
    "swla": MemorySpec("swla", SWLA, ("beta_prev", "lam"), ("log_decay",)),
    "dla": MemorySpec("dla", DEEP, ("theta",), ("alpha",), loss="dla"),
    "titans": MemorySpec("titans", DEEP, ("theta", "eta"), ("alpha",), loss="titans", momentum=True),
}


def get_memory(name: str) -> MemorySpec:
    """The :class:`MemorySpec` of ``name`` (a key of :data:`MEMORIES`), or a clear error."""
    if name not in MEMORIES:
        raise ValueError(f"unknown memory {name!r}; choose one of {sorted(MEMORIES)}")
    return MEMORIES[name]


def complete_gates(spec: MemorySpec, gates: dict[str, Array] | None, shape: tuple[int, int, int]) -> dict[str, Array]:
    """Check the user's gates against ``spec`` and fill the optional ones with their identity value.

    The result always holds ``log_decay`` for linear memories (zeros for ``linear``), ``beta`` only for ``delta``,
    ``beta_prev`` and ``lam`` for ``swla``, and ``theta``, ``alpha``, ``write`` (and ``eta`` for Titans) for deep
    memories.
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
    for name, g in spec.family.default_gates(shape).items():  # "write" is internal: never a user gate
        out.setdefault(name, g)
    return out


def initial_state(spec: MemorySpec, params: PyTree | None, batch: int, heads: int, dk: int, dv: int) -> PyTree:
    """The memory's initial state with a leading batch axis (float32, or float64 under x64)."""
    return spec.family.initial_state(spec, params, batch, heads, dk, dv)


def state_pass(spec: MemorySpec, k, v, gates, state, chunk: int, valid):
    """Run the memory over ``[r, t, h, *]`` tokens (``t`` a multiple of ``chunk``) from ``state``.

    Returns ``(chunk_data, final_state)``; ``chunk_data`` is whatever :func:`read_online` needs.
    """
    return spec.family.state_pass(spec, k, v, gates, state, chunk, valid)


def read_online(spec: MemorySpec, q, k, gates, chunk_data, chunk: int):
    """Online read-out of every token of a :func:`state_pass`, ``[r, t, h, dv]``."""
    return spec.family.read_online(q, k, gates, chunk_data, chunk)


def readable(spec: MemorySpec, state: PyTree) -> PyTree:
    """The part of a state that a read uses (linear: the matrix; deep: the weights)."""
    return spec.family.readable(state)


def read_state(spec: MemorySpec, memory: PyTree, x: Array) -> Array:
    """Read cached memories: ``memory`` leaves ``[..., dk, dv]`` (or MLP weights), ``x [..., c, dk]``."""
    return spec.family.read_state(memory, x)


__all__ = [
    "DEEP",
    "FAMILIES",
    "GATE_RANGES",
    "IDENTITY_GATES",
    "LINEAR",
    "SWLA",
    "check_gate_values",
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
