"""ssc's read of matrix memories as a grouped matmul: every state is read once per block of the rows that chose it.

ssc keeps at most ``top_k`` cached states per token, so its read ``y_t = sum_{i in top(t)} gamma_ti S_i^T q_t`` has
``T * top_k`` useful (token, state) products. Gathering the chosen states per query block
(:func:`mc_jax.ops.reads_causal.sparse_read`) loads a ``[Dk, Dv]`` state for every such product and reads each
gathered state with every row of its block. Here the ``T * top_k`` rows ``gamma_ti q_t`` are sorted by the state
they chose, as a mixture-of-experts layer sorts tokens by expert, so the rows of one state are contiguous:

* cut the sorted rows into tiles of ``rows``; a *pair* is one (tile, state) run inside a tile. A tile starts a pair
  and so does every change of state along the sorted rows, so there are at most ``tiles + N`` pairs whatever the
  routing: a static bound, data-dependent contents;
* per pair, one ``[rows, Dk] x [Dk, Dv]`` product of the tile with the pair's state, the rows of other pairs
  selected away (before and after the product, so a non-finite state reaches only the rows that chose it, forward
  and backward);
* each row takes its output from its own pair, and the rows go back to token order and are summed over the choices.

Work: ``(T * top_k + N * rows) * Dk * Dv`` multiply-adds and ``tiles + N`` state loads per (batch, head), against
``T * N / 2 * Dk * Dv`` for the causal dense read, so the cost grows with ``top_k``, not with the number of states.
The sort and the pair bookkeeping carry no gradient (routing indices); autodiff of the gathers and the batched
product gives the cotangents of ``q``, ``gamma`` and the states.

Layouts as in :mod:`mc_jax.ops.reads`: the stack ``[b, n, h, dk, dv]``, ``gamma`` / ``available`` ``[b, t, h, n]``,
``q`` ``[b, t, h, dk]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mc_jax.typing import Array, Bool, Float, Int


def _chosen_rows(q: Float[Array, "g t k"], gamma: Float[Array, "g t n"], available: Bool[Array, "g t n"],
                 top_k: int):
    """Each token's at most ``top_k`` live states (available, nonzero weight) as rows ``gamma q``: ``(rows [g, t c,
    dk], state [g, t c])`` with ``c = min(top_k, n)`` and state ``n`` (a sentinel) where a token has fewer."""
    n = gamma.shape[-1]
    live = available & (gamma != 0)
    score = jnp.where(live, jnp.abs(jax.lax.stop_gradient(gamma)), -1.0)
    _, choice = jax.lax.top_k(score, min(top_k, n))  # t c
    valid = jnp.take_along_axis(live, choice, -1)
    weight = jnp.where(valid, jnp.take_along_axis(gamma, choice, -1), 0.0)
    rows = weight[..., None] * q[..., None, :]  # g t c k
    g = q.shape[0]
    return rows.reshape(g, -1, q.shape[-1]), jnp.where(valid, choice, n).reshape(g, -1)


def _pairs(state: Int[Array, "g m"], rows: int, n: int):
    """The (tile, state) runs of the sorted rows of every group: ``(pair [g, m], pair_tile [g, p], pair_state [g,
    p])`` with ``p = tiles + n`` (an unused pair owns no row)."""
    g, m = state.shape
    index = jnp.arange(m)
    starts = (index % rows == 0) | (state != jnp.roll(state, 1, axis=-1))
    pair = jnp.cumsum(starts, axis=-1) - 1
    first = jax.vmap(jnp.searchsorted, in_axes=(0, None))(pair, jnp.arange(m // rows + n))
    first = jnp.minimum(first, m - 1)
    return pair, first // rows, jnp.take_along_axis(state, first, -1)


def _flat_take(a: Array, index: Int[Array, "g ..."]) -> Array:
    """``a[g, index[g, ...]]`` for every group ``g`` as one gather over the flattened leading axes."""
    g, m = a.shape[:2]
    offset = (jnp.arange(g) * m).reshape((g,) + (1,) * (index.ndim - 1))
    return a.reshape(g * m, *a.shape[2:])[index + offset]


def _grouped(q: Float[Array, "g t k"], gamma: Float[Array, "g t n"], available: Bool[Array, "g t n"],
             states: Float[Array, "g n k v"], *, top_k: int, rows: int) -> Float[Array, "g t v"]:
    """:func:`grouped_read` over ``g`` independent (batch, head) groups."""
    g, t, n = gamma.shape
    chosen, state = _chosen_rows(q, gamma, available, top_k)  # g m k, g m
    used = chosen.shape[1]
    pad = -used % rows
    order = jnp.argsort(state, axis=-1, stable=True)
    chosen = jnp.pad(jnp.take_along_axis(chosen, order[..., None], 1), ((0, 0), (0, pad), (0, 0)))
    state = jnp.pad(jnp.take_along_axis(state, order, 1), ((0, 0), (0, pad)), constant_values=n)
    pair, pair_tile, pair_state = _pairs(state, rows, n)
    n_pairs = pair_tile.shape[1]
    owned = (_flat_take(pair.reshape(g, -1, rows), pair_tile) == jnp.arange(n_pairs)[:, None]) & (
        pair_state < n)[..., None]  # g p rows
    lhs = jnp.where(owned[..., None], _flat_take(chosen.reshape(g, -1, rows, chosen.shape[-1]), pair_tile), 0.0)
    rhs = _flat_take(states, jnp.minimum(pair_state, n - 1))  # g p k v
    out = jnp.where(owned[..., None], jnp.einsum("gprk,gpkv->gprv", lhs, rhs), 0.0)
    flat = pair * rows + jnp.arange(pair.shape[1]) % rows  # each row from its own pair
    sorted_y = _flat_take(out.reshape(g, n_pairs * rows, -1), flat[:, :used])
    y = jnp.zeros_like(sorted_y).at[jnp.arange(g)[:, None], order].set(sorted_y, unique_indices=True)
    return y.reshape(g, t, -1, y.shape[-1]).sum(2)


def grouped_read(stack: Float[Array, "b n h dk dv"], gamma: Float[Array, "b t h n"], available: Bool[Array, "b t h n"],
                 q: Float[Array, "b t h dk"], *, top_k: int, rows: int) -> Float[Array, "b t h dv"]:
    """``y_t = sum_i gamma_ti S_i^T q_t`` over each token's at most ``top_k`` live states (available, ``gamma != 0``:
    ssc's weights), as a grouped matmul over the rows sorted by state (tiles of ``rows``)."""
    b, t, h = q.shape[:3]
    groups = lambda a: jnp.moveaxis(a, 2, 1).reshape(b * h, *a.shape[1:2], *a.shape[3:])  # (b h) t ...
    y = _grouped(groups(q), groups(gamma), groups(available), groups(stack), top_k=top_k, rows=rows)
    return jnp.moveaxis(y.reshape(b, h, t, -1), 1, 2)
