"""The segment-gated quadratic form: the cached read of a linear memory computed from the tokens, not the states.

For a memory whose state is a decayed sum of outer products (``linear``, ``gated_linear``: ``S_t = e^{g_t} S_{t-1}
+ k_t v_t^T``; not the delta rule, whose state mixes its tokens through the WY solve), the cached read of token
``t`` over constant segments of ``C`` tokens is

    y_t = sum_{i < s(t)} gamma[t, i] q_t^T S_i
        = sum_{j: s(j) < s(t)} W[t, s(j)] (q_t . k'_j) v_j  +  c_t q_t^T S_0,

with ``k'_j = e^{a_j} k_j``, ``a_j = sum_{m in s(j), m > j} g_m`` (the decay from token ``j`` to the end of its
segment) and, per ``init`` (DESIGN.md 3.2):

* ``independent``: ``S_i`` holds only segment ``i`` (from ``S_0``): ``W[t, s] = gamma[t, s]``,
  ``c_t = sum_i gamma[t, i] d_i`` with ``d_i = e^{tau_i}``, ``tau_i`` the log decay of the whole segment ``i``;
* ``checkpoint``: ``S_i`` is the prefix state at the end of segment ``i``, so key ``j`` reaches every
  ``i >= s(j)``, decayed over the segments between: ``W[t, s] = sum_{s <= i < s(t)} gamma[t, i] prod_{s < m <= i}
  d_m`` (a reverse linear recurrence over segments, :func:`checkpoint_weights`), ``c_t = d_0 W[t, 0]``.

:func:`quadratic_read` evaluates the first sum tile by tile over (query block, key block) pairs at or below the
diagonal (never a ``T x T`` array: one ``[bq, bk]`` tile at a time, ``W`` gathered per key block by segment index),
with a hand-written VJP that recomputes each tile once in a single backward pass. Work: ``T^2 / 2 * (Dk + Dv)``
multiply-adds against the state read's ``T * N / 2 * Dk * Dv`` (``mc_jax.dispatch.cost``).

Non-finite inputs stay causal: keys / values / gates of a bad token are replaced by zeros and every token that
weights a state holding one gets NaN (as the state read does).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mc_jax.ops.memories import LINEAR, SWLA, MemorySpec
from mc_jax.ops.utils import bad_log_gate, bad_rows
from mc_jax.typing import Array, Float


def outer_product_state(spec: MemorySpec) -> bool:
    """The memory's state is a decayed sum of ``k_j v_j^T`` with per-token coefficients: the linear family without
    the delta rule's ``beta``, and SWLA."""
    return spec.family in (LINEAR, SWLA) and "beta" not in spec.gate_names


# --- decays and weights per (token, segment) -------------------------------------------------------------------


def segment_decays(g: Float[Array, "b t h"], size: int) -> tuple[Float[Array, "b t h"], Float[Array, "b n h"]]:
    """``(a, tau)``: ``a_j = sum_{m in s(j), m > j} g_m`` (decay to the segment end, a reverse cumsum of the next
    gates, so a ``-inf`` gate never meets another) and ``tau_i`` the log decay of the whole segment ``i``."""
    b, t, h = g.shape
    gs = g.reshape(b, t // size, size, h)
    after = jnp.concatenate([gs[:, :, 1:], jnp.zeros_like(gs[:, :, :1])], axis=2)
    a = jnp.flip(jnp.cumsum(jnp.flip(after, 2), 2), 2)
    return a.reshape(b, t, h), gs.sum(2)


def checkpoint_weights(gamma: Float[Array, "b t h n"], decay: Float[Array, "b n h"]) -> Float[Array, "b t h n"]:
    """``W[t, s] = gamma[t, s] + d_{s+1} W[t, s+1]`` (``d = exp(tau)`` in ``[0, 1]``), an associative reverse scan."""
    d_next = jnp.concatenate([decay[:, 1:], jnp.zeros_like(decay[:, :1])], axis=1)  # b n h
    coef = jnp.broadcast_to(jnp.moveaxis(d_next, 1, 2)[:, None], gamma.shape)  # b t h n

    def compose(later, earlier):  # x_s = B_s + A_s x_{s+1}: apply the later range inside the earlier one
        return earlier[0] * later[0], earlier[1] + earlier[0] * later[1]

    return jax.lax.associative_scan(compose, (coef, gamma), reverse=True, axis=3)[1]


# --- the tiled quadratic form ----------------------------------------------------------------------------------


def _to_tiles(x: Float[Array, "b t h d"], tile: int) -> Float[Array, "nt b h c d"]:
    b, t, h = x.shape[:3]
    return jnp.moveaxis(x.reshape(b, t // tile, tile, h, *x.shape[3:]), (1, 3), (0, 2))


def _from_tiles(x: Float[Array, "nt b h c d"]) -> Float[Array, "b t h d"]:
    nt, b, h, c = x.shape[:4]
    return jnp.moveaxis(x, (0, 2), (1, 3)).reshape(b, nt * c, h, *x.shape[4:])


def _key_blocks(qi, size: int, tile: int):
    """Key blocks query block ``qi`` needs: those holding a key of a segment before its last token's segment."""
    visible = ((qi * tile + tile - 1) // size) * size  # keys [0, visible) lie in earlier segments
    return (visible + tile - 1) // tile


def _tile_weights(w_rows: Float[Array, "b h c n"], qi, ki, size: int, tile: int) -> Float[Array, "b h c c"]:
    """``W[t, s(j)]`` for the query rows of block ``qi`` and the keys of block ``ki``, zero unless ``s(j) < s(t)``."""
    if tile % size == 0:  # whole segments per key block
        per = tile // size
        cols = jnp.repeat(jax.lax.dynamic_slice_in_dim(w_rows, ki * per, per, axis=3), size, axis=3)
    else:  # the key block lies inside one segment
        cols = jax.lax.dynamic_slice_in_dim(w_rows, (ki * tile) // size, 1, axis=3)
    pos = jnp.arange(tile)
    visible = (ki * tile + pos)[None, :] // size < (qi * tile + pos)[:, None] // size
    return jnp.where(visible, cols, 0.0)


def _add_tile_weights(dw_rows, dtile, ki, size: int, tile: int):
    """The VJP of :func:`_tile_weights`'s gather: sum ``dtile [b h c c]`` over each segment's keys into ``dw_rows``."""
    if tile % size == 0:
        per = tile // size
        sums = dtile.reshape(*dtile.shape[:3], per, size).sum(4)
        start = ki * per
    else:
        per, sums, start = 1, dtile.sum(3, keepdims=True), (ki * tile) // size
    old = jax.lax.dynamic_slice_in_dim(dw_rows, start, per, axis=3)
    return jax.lax.dynamic_update_slice_in_dim(dw_rows, old + sums, start, axis=3)


def _forward(q, k, v, w, size, tile):
    qt, kt, vt, wt = (_to_tiles(x, tile) for x in (q, k, v, w))

    def one(args):
        qi, qb, wb = args

        def body(ki, acc):
            scores = jnp.einsum("bhik,bhjk->bhij", qb, kt[ki]) * _tile_weights(wb, qi, ki, size, tile)
            return acc + jnp.einsum("bhij,bhjv->bhiv", scores, vt[ki])

        return jax.lax.fori_loop(0, _key_blocks(qi, size, tile), body, jnp.zeros(qb.shape[:3] + vt.shape[-1:], q.dtype))

    return _from_tiles(jax.lax.map(one, (jnp.arange(qt.shape[0]), qt, wt)))


def _backward(q, k, v, w, dy, size, tile):
    """One pass over the tiles: ``A = Q K'^T``, ``B = dY V^T``; ``dq = (W B) K'``, ``dk' = (W B)^T Q``, ``dv = (W A)^T
    dY``, ``dW[t, s] = sum_{j in s} A B``."""
    qt, kt, vt, wt, dyt = (_to_tiles(x, tile) for x in (q, k, v, w, dy))

    def one(carry, args):
        qi, qb, wb, dyb = args

        def body(ki, state):
            dq, dw, dk, dv = state
            a = jnp.einsum("bhik,bhjk->bhij", qb, kt[ki])
            bm = jnp.einsum("bhiv,bhjv->bhij", dyb, vt[ki])
            wtile = _tile_weights(wb, qi, ki, size, tile)
            wb_, wa = wtile * bm, wtile * a
            dq = dq + jnp.einsum("bhij,bhjk->bhik", wb_, kt[ki])
            dk = dk.at[ki].add(jnp.einsum("bhij,bhik->bhjk", wb_, qb))
            dv = dv.at[ki].add(jnp.einsum("bhij,bhiv->bhjv", wa, dyb))
            dw = _add_tile_weights(dw, jnp.where(wtile != 0, a * bm, 0.0), ki, size, tile)
            return dq, dw, dk, dv

        init = (jnp.zeros_like(qb), jnp.zeros_like(wb)) + carry
        dq, dw, dk, dv = jax.lax.fori_loop(0, _key_blocks(qi, size, tile), body, init)
        return (dk, dv), (dq, dw)

    (dk, dv), (dq, dw) = jax.lax.scan(one, (jnp.zeros_like(kt), jnp.zeros_like(vt)),
                                      (jnp.arange(qt.shape[0]), qt, wt, dyt))
    return tuple(_from_tiles(x) for x in (dq, dk, dv, dw))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _quadratic(q, k, v, w, size: int, tile: int):
    return _forward(q, k, v, w, size, tile)


def _quadratic_fwd(q, k, v, w, size, tile):
    return _forward(q, k, v, w, size, tile), (q, k, v, w)


def _quadratic_bwd(size, tile, res, dy):
    return _backward(*res, dy, size, tile)


_quadratic.defvjp(_quadratic_fwd, _quadratic_bwd)


def quadratic_read(q: Float[Array, "b t h dk"], k: Float[Array, "b t h dk"], v: Float[Array, "b t h dv"],
                   w: Float[Array, "b t h n"], *, size: int, tile: int) -> Float[Array, "b t h dv"]:
    """``y_t = sum_{j: s(j) < s(t)} w[t, s(j)] (q_t . k_j) v_j`` over ``[tile, tile]`` tiles at or below the diagonal.

    ``s(j) = j // size``; ``tile`` divides ``t`` and is a multiple or a divisor of ``size``. Outputs and gradients
    of all four inputs (a hand-written VJP: one backward pass recomputing each tile once).
    """
    t = q.shape[1]
    if t % tile or (tile % size and size % tile) or w.shape[-1] * size < t:
        raise ValueError(f"quadratic_read: the tile ({tile}) must divide the length ({t}) and be a multiple or a "
                         f"divisor of the segment size ({size}), and w needs one column per segment "
                         f"(got {w.shape[-1]} for {t} tokens)")
    return _quadratic(q, k, v, w, size, tile)


# --- the cached read of a linear memory ------------------------------------------------------------------------


def swla_key_scales(a: Float[Array, "b t h"], lam: Float[Array, "b t h"], beta_prev: Float[Array, "b t h"],
                    size: int) -> tuple[Float[Array, "b t h"], Float[Array, "b n h"]]:
    """SWLA's coefficient of ``k_j v_j^T`` in its segment's end state, ``e_j = l_j e^{a_j} + b_{j+1} e^{a_{j+1}}``
    (the ``b``-write only inside the segment), and the ``b``-write that crosses into segment ``s`` under
    ``checkpoint`` (key ``k_{p-1}`` written at ``p = s C`` with ``b_p e^{a_p}``; zero for ``s = 0``)."""
    b, t, h = a.shape
    n = t // size
    seg = lambda x: x.reshape(b, n, size, h)
    written = seg(beta_prev) * jnp.exp(seg(a))  # b_p e^{a_p}: the b-write of token p - 1 made at p
    inside = jnp.concatenate([written[:, :, 1:], jnp.zeros_like(written[:, :, :1])], axis=2)
    scale = seg(lam) * jnp.exp(seg(a)) + inside
    crossing = written[:, :, 0].at[:, 0].set(0.0)  # b n h
    return scale.reshape(b, t, h), crossing


def _bad_tokens(k, v, gates) -> Array:
    """``[b t h]``: tokens with a non-finite key, value or gate (the states holding them are NaN)."""
    bad = bad_rows(k) | bad_rows(v) | bad_log_gate(gates["log_decay"])
    for name in ("lam", "beta_prev"):
        if name in gates:
            bad = bad | ~jnp.isfinite(gates[name])
    return bad


def token_read(q: Float[Array, "b t h dk"], k: Float[Array, "b t h dk"], v: Float[Array, "b t h dv"],
               gates: dict[str, Array], init_matrix: Float[Array, "b h dk dv"], gamma: Float[Array, "b t h n"], *,
               size: int, init: str, tile: int) -> Float[Array, "b t h dv"]:
    """``sum_{i < s(t)} gamma[t, i] q_t^T S_i`` of a linear / gated linear / SWLA memory over constant segments, from
    the tokens (the module's formula); ``t`` a multiple of ``size``, ``gamma`` zero for states a token cannot see,
    ``gates`` with ``log_decay`` (and SWLA's ``lam``, ``beta_prev``), ``init_matrix`` the initial ``S_0`` (SWLA's
    initial previous token is zero: a whole-sequence call starts from the initial state)."""
    bad = _bad_tokens(k, v, gates)
    clean = lambda x: jnp.where(bad.reshape(bad.shape + (1,) * (x.ndim - 3)), 0.0, x)
    k, v = clean(k), clean(v)
    a, tau = segment_decays(clean(gates["log_decay"]), size)
    decay = jnp.exp(tau)  # b n h
    b, t, h = bad.shape
    seg_bad = bad.reshape(b, t // size, size, h).any(2)  # b n h: the state of segment i holds a bad token
    if init == "checkpoint":
        w = checkpoint_weights(gamma, decay)
        coef = decay[:, :1] * w[..., 0]  # sum_i gamma[t, i] prod_{m <= i} d_m  (b 1 h * b t h)
        seg_bad = jnp.cumsum(seg_bad, axis=1) > 0  # a prefix state holds every earlier token
    else:
        w = gamma
        coef = jnp.einsum("bthn,bnh->bth", gamma, decay)
    scale, crossing = jnp.exp(a), None
    if "lam" in gates:
        scale, crossing = swla_key_scales(a, clean(gates["lam"]), clean(gates["beta_prev"]), size)
    y = quadratic_read(q, k * scale[..., None], v, w, size=size, tile=tile)
    y = y + coef[..., None] * jnp.einsum("bthk,bhkv->bthv", q, init_matrix)
    if crossing is not None and init == "checkpoint":  # one extra key per segment: k_{p-1}, v_{p-1} at p = s C
        starts = lambda x: jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, size - 1:-1:size]], axis=1)  # b n h d
        scores = jnp.einsum("bthk,bnhk->bthn", q, starts(k) * crossing[..., None]) * w
        y = y + jnp.einsum("bthn,bnhv->bthv", scores, starts(v))
    poisoned = jnp.any((gamma != 0) & jnp.moveaxis(seg_bad, 1, 2)[:, None], axis=-1)  # b t h
    return jnp.where(poisoned[..., None], jnp.nan, y)
