"""ssc over matrix memories without ``[b, t, h, n]`` weights: a top-k choice per query block and a grouped matmul.

ssc keeps at most ``top_k`` cached states per token: ``y_t = g_on y_on + sum_{i in top(t)} g_i S_i^T q_t``, the
softmax over the online logit and the chosen logits ``<u_t, pooled_i>``. The dense path forms every logit and weight
``[b, t, h, n]`` and reads every visible state (or, :func:`mc_jax.ops.reads_causal.sparse_read`, gathers a
``[Dk, Dv]`` state for every chosen pair and reads it with every row of its query block). Here:

* :func:`top_states` -- the choice, per query block: the block's ``[block, n]`` logits are transient, only the
  ``[b, t, h, top_k]`` indices are kept;
* :func:`topk_gated_read` -- the chosen logits recomputed from the gathered pooled keys (their gradient reaches
  ``u`` and the keys through the gather), the softmax over ``top_k + 1`` logits, and
* :func:`read_chosen` -- the read as a grouped matmul, as a mixture-of-experts layer sorts tokens by expert. The
  ``T * top_k`` rows ``g_ti q_t`` are sorted by the state they chose and cut into tiles of ``rows``; a *pair* is one
  (tile, state) run. A tile starts a pair and so does every change of state along the sorted rows, so there are at
  most ``tiles + N`` pairs whatever the routing (a static bound, data-dependent contents). Per pair, one ``[rows,
  Dk] x [Dk, Dv]`` product of the tile with the pair's state, the rows of other pairs selected away before and after
  it (so a non-finite state reaches only the rows that chose it, forward and backward); each row takes its output
  from its own pair, and the rows go back to token order and are summed over the choices.

Work per (batch, head): ``T * N * Dk`` for the transient logits, ``(T * top_k + N * rows) * Dk * Dv`` multiply-adds
and ``tiles + N`` state loads for the read, against ``T * N / 2 * Dk * Dv`` for the causal dense read: the read's
cost grows with ``top_k``, not with the number of states. The choice, the sort and the pair bookkeeping are integer
routing (no gradient); autodiff of the gathers, the softmax and the batched product gives the cotangents.

Layouts as in :mod:`mc_jax.ops.reads`: stacks ``[b, n, h, ...]``, per-token arrays ``[b, t, h, ...]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mc_jax.ops.utils import take_per_group
from mc_jax.typing import Array, Bool, Float, Int


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


def _grouped(q: Float[Array, "g t k"], choice: Int[Array, "g t c"], weight: Float[Array, "g t c"],
             states: Float[Array, "g n k v"], *, rows: int) -> Float[Array, "g t v"]:
    """:func:`read_chosen` over ``g`` independent (batch, head) groups."""
    g, t, _ = choice.shape
    n = states.shape[1]
    chosen = (weight[..., None] * q[..., None, :]).reshape(g, -1, q.shape[-1])  # the rows gamma q, g (t c) k
    state = jnp.where(weight != 0, choice, n).reshape(g, -1)  # n: a sentinel for an empty slot
    used = chosen.shape[1]
    pad = -used % rows
    order = jnp.argsort(state, axis=-1, stable=True)
    chosen = jnp.pad(jnp.take_along_axis(chosen, order[..., None], 1), ((0, 0), (0, pad), (0, 0)))
    state = jnp.pad(jnp.take_along_axis(state, order, 1), ((0, 0), (0, pad)), constant_values=n)
    pair, pair_tile, pair_state = _pairs(state, rows, n)
    n_pairs = pair_tile.shape[1]
    owned = (take_per_group(pair.reshape(g, -1, rows), pair_tile) == jnp.arange(n_pairs)[:, None]) & (
        pair_state < n)[..., None]  # g p rows
    lhs = jnp.where(owned[..., None], take_per_group(chosen.reshape(g, -1, rows, chosen.shape[-1]), pair_tile), 0.0)
    rhs = take_per_group(states, jnp.minimum(pair_state, n - 1))  # g p k v
    out = jnp.where(owned[..., None], jnp.einsum("gprk,gpkv->gprv", lhs, rhs), 0.0)
    flat = pair * rows + jnp.arange(pair.shape[1]) % rows  # each row from its own pair
    sorted_y = take_per_group(out.reshape(g, n_pairs * rows, -1), flat[:, :used])
    y = jnp.zeros_like(sorted_y).at[jnp.arange(g)[:, None], order].set(sorted_y, unique_indices=True)
    return y.reshape(g, t, -1, y.shape[-1]).sum(2)


def _groups(a: Array) -> Array:
    """``[b, t, h, ...] -> [(b h), t, ...]``."""
    return jnp.moveaxis(a, 2, 1).reshape(a.shape[0] * a.shape[2], a.shape[1], *a.shape[3:])


def read_chosen(stack: Float[Array, "b n h dk dv"], choice: Int[Array, "b t h c"], weight: Float[Array, "b t h c"],
                q: Float[Array, "b t h dk"], *, rows: int) -> Float[Array, "b t h dv"]:
    """``y_t = sum_c weight_tc S_{choice_tc}^T q_t`` as a grouped matmul over the rows sorted by state (tiles of
    ``rows``); a slot of weight 0 is dropped (never multiplied)."""
    b, t, h = q.shape[:3]
    y = _grouped(_groups(q), _groups(choice), _groups(weight), _groups(stack), rows=rows)
    return jnp.moveaxis(y.reshape(b, h, t, -1), 1, 2)


# --- ssc without the [b, t, h, n] weights ----------------------------------------------------------------------
def top_states(u: Float[Array, "b t h dk"], pooled: Float[Array, "b n h dk"], *, size: int, top_k: int,
               block: int) -> tuple[Int[Array, "b t h c"], Bool[Array, "b t h c"]]:
    """Each token's ``c = min(top_k, n)`` largest logits ``<u_t, pooled_i>`` among the states it sees (``i < t //
    size``), per query block of ``block`` tokens (the block's ``[block, n]`` logits are transient): ``(choice,
    visible)``. The same selection as :func:`mc_jax.ops.aggregation.topk_mask` (same masked scores, same
    ``lax.top_k``); routing, so no gradient."""
    b, t, h, _ = u.shape
    n = pooled.shape[1]
    u, pooled = jax.lax.stop_gradient(u), jax.lax.stop_gradient(pooled)

    def one(start):
        ub = jax.lax.dynamic_slice_in_dim(u, start, block, axis=1)
        sees = (jnp.arange(n)[None, :] < ((start + jnp.arange(block)) // size)[:, None])[None, :, None]  # 1 c 1 n
        logits = jnp.where(sees, jnp.einsum("bchd,bnhd->bchn", ub, pooled), -jnp.inf)
        _, choice = jax.lax.top_k(logits, min(top_k, n))
        return choice, jnp.take_along_axis(jnp.broadcast_to(sees, logits.shape), choice, -1)

    choice, visible = jax.lax.map(one, jnp.arange(0, t, block))  # nb b c h k
    merge = lambda a: jnp.moveaxis(a, 0, 1).reshape(b, t, h, -1)
    return merge(choice), merge(visible)


def topk_gated_read(q: Float[Array, "b t h dk"], u: Float[Array, "b t h dk"], online_logit: Float[Array, "b t h"],
                    y_online: Float[Array, "b t h dv"], pooled: Float[Array, "b n h dk"],
                    states: Float[Array, "b n h dk dv"], *, size: int, top_k: int, block: int,
                    rows: int) -> Float[Array, "b t h dv"]:
    """ssc over matrix memories, whole sequence: ``y_t = g_on y_on + sum_{i in top(t)} g_i S_i^T q_t`` with the
    softmax over the online logit and the chosen logits only.

    The choice is made per query block (:func:`top_states`); the chosen logits are recomputed from the gathered
    pooled keys, ``<u_t, pooled_{choice}>`` (``[b, t, h, c]``: their gradient reaches ``u`` and the pooled keys
    through the gather), so no ``[b, t, h, n]`` array is formed forward or backward: ``T * N * Dk`` for the
    transient logits and ``T * top_k`` for everything kept.
    """
    choice, visible = top_states(u, pooled, size=size, top_k=top_k, block=block)
    b, t, h = q.shape[:3]
    pooled_chosen = take_per_group(_groups(pooled), _groups(choice))  # (b h) t c dk
    logits = jnp.einsum("bthd,bhtcd->bthc", u, pooled_chosen.reshape(b, h, *pooled_chosen.shape[1:]))
    full = jnp.concatenate([online_logit[..., None], jnp.where(visible, logits, -jnp.inf)], axis=-1)
    gamma = jax.nn.softmax(full, axis=-1)
    weight = jnp.where(visible, gamma[..., 1:], 0.0)
    return gamma[..., :1] * y_online + read_chosen(states, choice, weight, q, rows=rows)
