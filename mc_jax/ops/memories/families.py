"""The two memory families as objects: what Memory Caching needs to know about a state and how to read it.

A family fixes the shape of the state, the chunk-wise state pass and online read (in :mod:`.linear` / :mod:`.deep`),
which part of a state a cached read uses (``readable``), and the per-token *maps* a cached memory applies to its
input: ``read`` (the full read-out ``M(x)``) and, for the deep family, its two linear layers ``W2`` (``d -> f``) and
``W1`` (``f -> d``), which soup mixes one layer at a time. Each map has an einsum per read layout:

* ``dense``: one stack ``[b, h, m, ...]`` shared by a block of tokens ``x [b, h, c, i]`` -> ``[b, h, c, m, o]``;
* ``blocked``: one memory per run of tokens, stack ``[b, n, h, ...]``, ``x [b, n, c, h, i]`` -> ``[b, n, c, h, o]``
  (token-major, as the runs are cut from ``[b, t, h, i]``).

Every family-specific decision of :mod:`mc_jax.ops` is a method or attribute here; nothing else compares names.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from mc_jax.ops.memories import deep, linear, swla
from mc_jax.ops.utils import state_dtype
from mc_jax.typing import Array, PyTree


@dataclass(frozen=True)
class LinearFamily:
    """Matrix state ``S [dk, dv]`` per head: ``linear``, ``gated_linear``, ``delta``."""

    name: str = "linear"
    deep: bool = False  # needs Dk == Dv, learned initial weights and a semantic inner chunk
    default_chunk: int = 64  # a speed knob only: the chunk form is exact for any chunk
    soup_layers: tuple[str, ...] = ()  # soup reads like grm: the read is linear in the state
    einsums = {
        "dense": {"read": "bhck,bhmkv->bhcmv"},
        "blocked": {"read": "bnchk,bnhkv->bnchv"},
    }

    def default_gates(self, shape: tuple[int, int, int]) -> dict[str, Array]:
        """Gates every linear memory's chunk form reads, with their identity value."""
        return {"log_decay": jnp.zeros(shape, state_dtype())}

    def state_pass(self, spec, k, v, gates, state, chunk: int, valid):
        """``(chunk_data, final)`` over ``[r, t, h, *]`` tokens; chunk_data
        ``(starts [r n h dk dv], u [r n h c dv])``."""
        starts, u, final = linear.state_pass(k, v, gates, state, chunk, valid)
        return (starts, u), final

    def read_online(self, q, k, gates, chunk_data, chunk: int):
        """Online read-out ``[r, t, h, dv]`` of every token of a :meth:`state_pass`."""
        return linear.read(q, k, gates, chunk_data[0], chunk_data[1], chunk)

    def chunk_start_states(self, chunk_data) -> PyTree:
        """Readable states at the start of every chunk, ``[r, n, h, dk, dv]``."""
        return chunk_data[0]

    def readable(self, state: PyTree) -> PyTree:
        """The part of a state a read uses: the matrix itself."""
        return state

    def read_state(self, memory: PyTree, x: Array) -> Array:
        """Read memories ``[..., dk, dv]`` at ``x [..., c, dk]`` -> ``[..., c, dv]``."""
        return linear.read_state(memory, x)

    def apply_map(self, layout: str, what: str, stack: PyTree, x: Array) -> Array:
        """Map ``what`` of every memory of ``stack`` applied to ``x`` (shapes: module docstring)."""
        return jnp.einsum(self.einsums[layout]["read"], x, stack)

    def map_residual(self, what: str, x: Array, gamma_sum: Array) -> Array | float:
        """The part of a gamma-weighted sum of maps that does not depend on the memory (none for linear)."""
        return 0.0

    def initial_state(self, spec, params, batch: int, heads: int, dk: int, dv: int) -> PyTree:
        """``[B, H, Dk, Dv]``: zeros, or ``params`` (``[B, H, Dk, Dv]`` / ``[H, Dk, Dv]``) broadcast."""
        sd = state_dtype()
        if params is None:
            return jnp.zeros((batch, heads, dk, dv), sd)
        params = jnp.asarray(params)
        if params.shape not in ((heads, dk, dv), (batch, heads, dk, dv)):
            raise ValueError(
                f"params for memory {spec.name!r} is the initial state [B, H, Dk, Dv] = {(batch, heads, dk, dv)} "
                f"(or [H, Dk, Dv]); got shape {params.shape}"
            )
        return jnp.broadcast_to(params, (batch, heads, dk, dv)).astype(sd)


@dataclass(frozen=True)
class DeepFamily:
    """MLP state ``M_W(x) = x + W1 gelu(W2 x)`` per head (``weights``, ``reference``, optional ``momentum``)."""

    name: str = "deep"
    deep: bool = True
    default_chunk: int = 16  # part of the model: gradients are taken at chunk starts
    soup_layers: tuple[str, ...] = ("W2", "W1")
    einsums = {
        "dense": {"W2": "bhcd,bhmfd->bhcmf", "W1": "bhcf,bhmdf->bhcmd", "W1_of_hidden": "bhcmf,bhmdf->bhcmd"},
        "blocked": {"W2": "bnchd,bnhfd->bnchf", "W1": "bnchf,bnhdf->bnchd", "W1_of_hidden": "bnchf,bnhdf->bnchd"},
    }

    def default_gates(self, shape: tuple[int, int, int]) -> dict[str, Array]:
        """``alpha`` (no forgetting) and ``write`` (ones; zero only on padding)."""
        return {"alpha": jnp.zeros(shape, state_dtype()), "write": jnp.ones(shape, state_dtype())}

    def state_pass(self, spec, k, v, gates, state, chunk: int, valid):
        """``(DeepChunks, final)`` over ``[r, t, h, d]`` tokens."""
        return deep.state_pass(k, v, gates, state, chunk, valid, loss=spec.loss, momentum=spec.momentum)

    def read_online(self, q, k, gates, chunk_data, chunk: int):
        """Online read-out ``[r, t, h, d]`` with the exact per-token weights."""
        return deep.read(q, chunk_data, chunk)

    def online_layer(self, layer: str, x: Array, chunk_data) -> Array:
        """The online memory's exact per-token ``layer`` (``W2`` / ``W1``) applied to ``x [r, n, h, c, i]``."""
        return deep.apply_layer(layer, x, chunk_data)

    def chunk_start_states(self, chunk_data) -> PyTree:
        """Weights at the start of every chunk, leaves ``[r, n, h, ...]``."""
        return chunk_data.weights

    def readable(self, state: PyTree) -> PyTree:
        """The part of a state a read uses: the MLP weights."""
        return state["weights"]

    def read_state(self, memory: PyTree, x: Array) -> Array:
        """``M_W(x)`` for weights leaves ``[..., d, f]`` / ``[..., f, d]`` and ``x [..., c, d]``."""
        return deep.mlp(memory, x)

    def apply_map(self, layout: str, what: str, stack: PyTree, x: Array) -> Array:
        """Map ``what`` (``W2``, ``W1`` or ``read`` without its residual ``x``) of every memory of ``stack``."""
        table = self.einsums[layout]
        if what != "read":
            return jnp.einsum(table[what], x, stack[what])
        hidden = jax.nn.gelu(jnp.einsum(table["W2"], x, stack["W2"]))
        return jnp.einsum(table["W1_of_hidden"], hidden, stack["W1"])

    def map_residual(self, what: str, x: Array, gamma_sum: Array) -> Array | float:
        """The residual ``x`` of ``M(x) = x + W1 gelu(W2 x)`` summed over the memories: ``x * sum(gamma)``."""
        return x * gamma_sum[..., None] if what == "read" else 0.0

    def soup(self, q, gamma, gamma_on, online_layer, mix):
        """Soup read ``M*(q)`` with ``W*_j = gamma_on W_j(t) + sum_i gamma_i W_j^(i)``, layer by layer.

        ``online_layer(layer, x)`` applies the online memory's exact per-token layer; ``mix(layer, x)`` the
        gamma-weighted cached layers. The residual term is ``q * sum(gamma)``.
        """
        hidden = jax.nn.gelu(gamma_on[..., None] * online_layer("W2", q) + mix("W2", q))
        return (q * (gamma_on + gamma.sum(-1))[..., None]
                + gamma_on[..., None] * online_layer("W1", hidden)
                + mix("W1", hidden))

    def initial_state(self, spec, params, batch: int, heads: int, dk: int, dv: int) -> PyTree:
        """``{"weights", "reference"[, "momentum"]}`` from the learned ``W_0`` (``params``, required)."""
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
                f"params W1 must be [H, D, F] and W2 [H, F, D] with H={heads}, D={dk} (optionally a leading batch "
                f"axis); got W1 {w1.shape}, W2 {w2.shape}"
            )
        if w1.ndim == 4 and w1.shape[0] != batch or w2.ndim != w1.ndim:
            raise ValueError(f"batched params must have leading axis B={batch} on both W1 and W2")
        return _deep_state(w1, w2, batch, heads, dk, spec.momentum)


def _deep_state(w1, w2, batch: int, heads: int, d: int, momentum: bool) -> PyTree:
    """Weights ``W1 [B H d f]`` / ``W2 [B H f d]`` broadcast from ``W_0``, as weights and reference; zero momentum."""
    sd = state_dtype()
    f = w1.shape[-1]
    weights = {
        "W1": jnp.broadcast_to(w1, (batch, heads, d, f)).astype(sd),
        "W2": jnp.broadcast_to(w2, (batch, heads, f, d)).astype(sd),
    }
    state = {"weights": weights, "reference": weights}
    if momentum:
        state["momentum"] = jax.tree.map(jnp.zeros_like, weights)
    return state


@dataclass(frozen=True)
class SWLAFamily(LinearFamily):
    """Sliding-window linear attention (window 2, :mod:`.swla`): a matrix ``S [dk, dv]`` read like a linear memory,
    plus the previous token's key and value in the state (``{"S", "k_prev", "v_prev"}``) for the window term."""

    name: str = "swla"

    def state_pass(self, spec, k, v, gates, state, chunk: int, valid):
        """``(chunk_data, final)``; chunk_data ``(m_starts [r n h dk dv], ...)`` (:func:`.swla.state_pass`)."""
        return swla.state_pass(k, v, gates, state, chunk, valid)

    def read_online(self, q, k, gates, chunk_data, chunk: int):
        """``o_t = M_t^T q_t`` for every token (the shifted GLA read plus the diagonal ``l_t`` term)."""
        return swla.read(q, k, gates, chunk_data, chunk)

    def readable(self, state: PyTree) -> PyTree:
        """The matrix ``S``; the window's previous token is not part of a cached read."""
        return state["S"]

    def initial_state(self, spec, params, batch: int, heads: int, dk: int, dv: int) -> PyTree:
        """The linear family's matrix (zeros or ``params``) with no previous token."""
        return swla.initial_state(super().initial_state(spec, params, batch, heads, dk, dv))


LINEAR = LinearFamily()
DEEP = DeepFamily()
SWLA = SWLAFamily()
FAMILIES = (LINEAR, DEEP, SWLA)
