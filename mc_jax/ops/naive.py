"""The definition: Memory Caching by explicit per-token loops (slow, obvious; the top rung of the test ladder).

Nothing here is shared with the fast paths except the public argument checks: every memory update is written
token by token, every cached memory is rebuilt from its own token range, soup mixes the parameters literally and
ssc sorts. Use it with float64 (``jax.config.update("jax_enable_x64", True)``) and tiny shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mc_jax.ops.memories import DEEP, LINEAR, SWLA, MemorySpec, readable
from mc_jax.ops.segmentation import cached_ranges
from mc_jax.typing import Array, PyTree


def _deep_loss(loss: str):
    def value(weights, k, v):  # one head
        m = k + weights["W1"] @ jax.nn.gelu(weights["W2"] @ k)
        return -jnp.dot(m, v) if loss == "dla" else jnp.sum((m - v) ** 2)

    return jax.vmap(jax.vmap(jax.grad(value)))  # over batch and heads


def _linear_step(spec: MemorySpec, state, k, v, gates, chunk_start: bool):
    """``S_t`` of the (gated) linear or delta rule from ``S_{t-1} [b h dk dv]``."""
    del spec, chunk_start
    decay = jnp.exp(gates["log_decay"])[..., None, None]
    if "beta" in gates:
        beta = gates["beta"][..., None, None]
        kks = jnp.einsum("bhk,bhj,bhjv->bhkv", k, k, state)
        return decay * (state - beta * kks) + beta * jnp.einsum("bhk,bhv->bhkv", k, v)
    return decay * state + jnp.einsum("bhk,bhv->bhkv", k, v)


def _deep_step(spec: MemorySpec, state, k, v, gates, chunk_start: bool):
    """One DLA / Titans step; gradients at the chunk-start (reference) weights."""
    weights = state["weights"]
    reference = weights if chunk_start else state["reference"]
    grad = _deep_loss(spec.loss)(reference, k, v)
    keep = (1.0 - gates["alpha"])[..., None, None]
    theta = gates["theta"][..., None, None]
    new = {"reference": reference}
    if spec.momentum:
        eta = gates["eta"][..., None, None]
        new["momentum"] = jax.tree.map(lambda s, g: eta * s - theta * g, state["momentum"], grad)
        new["weights"] = jax.tree.map(lambda w, s: keep * w + s, weights, new["momentum"])
    else:
        new["weights"] = jax.tree.map(lambda w, g: keep * w - theta * g, weights, grad)
    return new


def _swla_step(spec: MemorySpec, state, k, v, gates, chunk_start: bool):
    """SWLA: ``M_t = a_t M_{t-1} + b_t k_{t-1} v_{t-1}^T + l_t k_t v_t^T`` from ``{"S", "k_prev", "v_prev"}``."""
    del spec, chunk_start
    outer = lambda x, y: jnp.einsum("bhk,bhv->bhkv", x, y)
    matrix = (jnp.exp(gates["log_decay"])[..., None, None] * state["S"]
              + gates["beta_prev"][..., None, None] * outer(state["k_prev"], state["v_prev"])
              + gates["lam"][..., None, None] * outer(k, v))
    return {"S": matrix, "k_prev": k, "v_prev": v}


def _linear_read(memory, q):
    """``S^T q`` for ``S [b h dk dv]``, ``q [b h dk]``."""
    return jnp.einsum("bhk,bhkv->bhv", q, memory)


def _deep_read(memory, q):
    """``q + W1 gelu(W2 q)`` for ``q [b h d]``."""
    hidden = jax.nn.gelu(jnp.einsum("bhfd,bhd->bhf", memory["W2"], q))
    return q + jnp.einsum("bhdf,bhf->bhd", memory["W1"], hidden)


# The per-token definition of each family: (one update step, one read).
_DEFINITIONS = {LINEAR: (_linear_step, _linear_read), DEEP: (_deep_step, _deep_read), SWLA: (_swla_step, _linear_read)}


def memory_step(spec: MemorySpec, state: PyTree, k: Array, v: Array, gates: dict[str, Array], chunk_start: bool):
    """One token of the base memory; ``k [b, h, dk]``, ``v [b, h, dv]``, gates ``[b, h]``."""
    return _DEFINITIONS[spec.family][0](spec, state, k, v, gates, chunk_start)


_step = jax.jit(memory_step, static_argnums=(0, 5))


def read(spec: MemorySpec, memory: PyTree, q: Array) -> Array:
    """Read one token ``q [b, h, dk]`` from a memory's readable part."""
    return _DEFINITIONS[spec.family][1](memory, q)


_read = jax.jit(read, static_argnums=0)


def _weights_by_definition(aggregation, u, t, online_key, cached_keys, top_k, shape):
    """``(gamma_on [b h], [gamma_i [b h]])`` of token ``t`` from the pooled keys of its online and cached memories."""
    n = len(cached_keys)
    if aggregation in ("residual", "uniform"):
        share = 1.0 if aggregation == "residual" else 1.0 / (1 + n)
        return jnp.full(shape, share), [jnp.full(shape, share)] * n
    if aggregation == "token":  # the token's own logit for the online memory, 0 for every cached one
        logit_on, logits = u[:, t, :, 0], [jnp.zeros(shape, u.dtype)] * n
    else:
        logit_on = jnp.einsum("bhd,bhd->bh", u[:, t], online_key)
        logits = [jnp.einsum("bhd,bhd->bh", u[:, t], key) for key in cached_keys]
    keep = [jnp.ones_like(logit_on, dtype=bool) for _ in logits]
    if aggregation == "ssc" and n > top_k:
        # rank of each cached logit, largest first (ties: the older segment first)
        rank = jnp.argsort(jnp.argsort(-jnp.stack(logits, -1), axis=-1, stable=True), axis=-1, stable=True)
        keep = [rank[..., i] < top_k for i in range(n)]
    all_logits = jnp.stack([logit_on] + [jnp.where(m, logit, -jnp.inf) for logit, m in zip(logits, keep)], -1)
    weights = jax.nn.softmax(all_logits, axis=-1)
    return weights[..., 0], [weights[..., i + 1] for i in range(n)]


def naive_memory_caching(q, k, v, u, gates, init_state, spec: MemorySpec, *, aggregation, segmentation,
                         segment_size, top_k, init, pool, chunk_size):
    """MC by definition. Arguments as in :func:`mc_jax.ops.memory_caching` (already validated)."""
    batch, length = q.shape[:2]
    runs: dict[int, list] = {}  # run start -> states after each of its tokens (extended on demand)

    def memory_of(start: int, end: int) -> PyTree:
        """The memory that compressed tokens ``[start, end]`` (inclusive)."""
        run_start = start if init == "independent" else 0
        states = runs.setdefault(run_start, [])
        while len(states) <= end - run_start:
            t = run_start + len(states)
            previous = states[-1] if states else init_state
            g_t = {name: g[:, t] for name, g in gates.items()}
            states.append(_step(spec, previous, k[:, t], v[:, t], g_t, (t - run_start) % chunk_size == 0))
        return readable(spec, states[end - run_start])

    def pooled(start: int, end: int) -> Array:
        keys = k[:, start : end + 1].sum(axis=1)
        return keys / (end + 1 - start) if pool == "mean" else keys

    outputs = []
    for t in range(length):
        ranges, online_start = cached_ranges(t, segmentation, segment_size)
        online = memory_of(online_start, t)
        mems = [memory_of(s, e - 1) for s, e in ranges]
        q_t = q[:, t]
        gamma_on, gammas = _weights_by_definition(aggregation, u, t, pooled(online_start, t),
                                                  [pooled(s, e - 1) for s, e in ranges], top_k, (batch, q.shape[2]))
        if aggregation == "soup":
            mixed = jax.tree.map(lambda x: gamma_on.reshape(gamma_on.shape + (1, 1)) * x, online)
            for g, mem in zip(gammas, mems):
                mixed = jax.tree.map(lambda a, x: a + g.reshape(g.shape + (1, 1)) * x, mixed, mem)
            y_t = _read(spec, mixed, q_t)
        else:
            y_t = gamma_on[..., None] * _read(spec, online, q_t)
            for g, mem in zip(gammas, mems):
                y_t = y_t + g[..., None] * _read(spec, mem, q_t)
        outputs.append(y_t)
    return jnp.stack(outputs, axis=1)
