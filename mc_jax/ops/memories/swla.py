"""SWLA: sliding-window linear attention with window 2, the paper's linear base memory (Eq. 26-29).

    M_t = a_t M_{t-1} + b_t k_{t-1} v_{t-1}^T + l_t k_t v_t^T,     a_t = exp(g_t) (g = ``log_decay``),
    o_t = M_t^T q_t                                                 (b = ``beta_prev``, l = ``lam``)

Every token is written twice: with ``l_t`` when it arrives and with ``b_{t+1}`` when the next token arrives (the
window of the online regression covers the last two tokens). The state is ``{"S": M [r h dk dv], "k_prev": [r h dk],
"v_prev": [r h dv]}``: the matrix and the last real token's key and value, which the next token's window term needs
(so a second call, or one decoding step, continues exactly). The readable part is ``S``.

Chunk form (exact). Write ``A(i..t) = prod_{m=i..t} a_m`` (1 when empty). Unrolling the recurrence, the coefficient
of ``k_j v_j^T`` in ``M_t`` is
    c_{t,j} = l_j A(j+1..t) + b_{j+1} A(j+2..t) = A(j+2..t) w_j   (j < t),     c_{t,t} = l_t,
    w_j = l_j a_{j+1} + b_{j+1}     (token j's weight once token j + 1 has arrived).
Hence ``M_t = G_t + l_t k_t v_t^T`` with
    G_t = a_t G_{t-1} + (w_{t-1} k_{t-1}) v_{t-1}^T,
which is gated linear attention (:mod:`linear`) over the keys and values shifted by one token, the shifted keys
scaled by ``w``. From a state ``(M_s, k_s, v_s)`` the ``l_s`` part of token s is already in ``M_s``: ``G_s = M_s``
and the first shifted write is ``b_{s+1} k_s v_s^T`` (``w_s = b_{s+1}``). The read is
    o_t = G_t^T q_t + l_t (q_t . k_t) v_t,
the chunk-wise GLA read plus a diagonal term; the memory at a chunk boundary is ``G`` there plus the ``l``-write of
the token before it. Padding (``k = v = 0, a = 1, b = l = 0``) is an identity step: it adds nothing to ``G`` after
the last real token's own ``l``-write (``w = l``), and ``k_prev, v_prev`` skip it (taken from the last real token).

Decision: the window term at a segment boundary (DESIGN.md section 3.2). With ``independent`` segments every
segment starts from the initial state, whose ``k_prev = v_prev = 0``: the first token of a segment has no window
term, and the last token of a segment is written only by its own ``l`` (its ``b``-write would fall in the next
segment). A cached memory then summarises exactly its own tokens -- the same tokens its pooled routing key covers
-- and segments are compressed in parallel without looking at a neighbour. With ``checkpoint`` the online memory
continues from the previous segment's full state, ``k_prev`` included, so the window crosses the boundary and the
run is the base memory's exactly. (Hence residual + independent SWLA is *not* SWLA over the whole prefix even
without decay: the boundary pairs lose their ``b``-write; tests/ops/test_swla.py checks this identity too.)
"""

from __future__ import annotations

import jax.numpy as jnp

from mc_jax.ops.memories import linear
from mc_jax.ops.memories.linear import to_chunks
from mc_jax.ops.utils import state_dtype
from mc_jax.typing import Array, Float, PyTree


def initial_state(matrix: Float[Array, "r h dk dv"]) -> PyTree:
    """The SWLA state starting from ``matrix``, with no previous token (``k_prev = v_prev = 0``)."""
    return {"S": matrix, "k_prev": jnp.zeros(matrix.shape[:-1], matrix.dtype),
            "v_prev": jnp.zeros(matrix.shape[:-2] + matrix.shape[-1:], matrix.dtype)}


def _previous(x: Float[Array, "r t h d"], first: Float[Array, "r h d"], valid: Array) -> Float[Array, "r t h d"]:
    """``x`` of the previous real token at every position (``first`` where none in this call precedes it)."""
    shifted = jnp.concatenate([first[:, None], x[:, :-1]], axis=1)
    had = jnp.concatenate([jnp.zeros_like(valid[:, :1]), valid[:, :-1]], axis=1)
    return jnp.where(had[..., None], shifted, first[:, None])


def _last_real(x: Float[Array, "r t h d"], fallback: Float[Array, "r h d"], valid: Array) -> Float[Array, "r h d"]:
    """``x`` at the last real token (real tokens are one contiguous run), ``fallback`` when there is none."""
    last = valid & ~jnp.concatenate([valid[:, 1:], jnp.zeros_like(valid[:, :1])], axis=1)
    picked = jnp.sum(jnp.where(last[..., None], x, 0.0), axis=1)
    return jnp.where(jnp.any(valid, axis=1)[..., None], picked, fallback)


def shifted_inputs(k, v, gates: dict[str, Array], state: PyTree, valid: Array):
    """The GLA inputs of the chunk form: ``(w_{t-1} k_{t-1}, v_{t-1}, l_t)`` per position (``[r t h *]``)."""
    sd = state_dtype()
    k, v = k.astype(sd), v.astype(sd)
    lam = jnp.where(valid, gates["lam"].astype(sd), 0.0)
    lam_prev = jnp.concatenate([jnp.zeros_like(lam[:, :1]), lam[:, :-1]], axis=1)  # 0 at the start: in M_s
    weight = lam_prev * jnp.exp(gates["log_decay"].astype(sd)) + gates["beta_prev"].astype(sd)
    k_prev = _previous(k, state["k_prev"].astype(sd), valid)
    v_prev = _previous(v, state["v_prev"].astype(sd), valid)
    return weight[..., None] * k_prev, v_prev, lam


def state_pass(
    k: Float[Array, "r t h dk"],
    v: Float[Array, "r t h dv"],
    gates: dict[str, Array],
    state: PyTree,
    chunk: int,
    valid: Array | None = None,
):
    """Sequential pass over chunks: ``((m_starts, g_starts, u, k_shift, lam_v), final_state)``.

    ``m_starts [r n h dk dv]`` is the memory ``M`` before each chunk (first, so the parallel form's checkpoint
    boundaries read it like a linear memory's chunk starts); the rest is what :func:`read` needs.
    """
    if valid is None:
        valid = jnp.ones(k.shape[:3], bool)
    sd = state_dtype()
    k_shift, v_shift, lam = shifted_inputs(k, v, gates, state, valid)
    decay = {"log_decay": gates["log_decay"]}
    g_starts, u, g_final = linear.scan_chunks(linear.chunk_terms(k_shift, v_shift, decay, chunk),
                                              state["S"].astype(sd))
    kv_l = lambda i: lam[:, i, :, None, None] * jnp.einsum("rhk,rhv->rhkv", k[:, i].astype(sd), v[:, i].astype(sd))
    # M before chunk n = G there + the l-write of the token before it (the last of chunk n - 1; none for chunk 0)
    lam_c, k_c, v_c = (to_chunks(x, chunk)[:, :, :, -1] for x in (lam, k.astype(sd), v.astype(sd)))  # r n h *
    last_write = lam_c[..., None, None] * jnp.einsum("rnhk,rnhv->rnhkv", k_c, v_c)
    m_starts = g_starts + jnp.concatenate([jnp.zeros_like(last_write[:, :1]), last_write[:, :-1]], axis=1)
    final = {"S": g_final + kv_l(-1),
             "k_prev": _last_real(k.astype(sd), state["k_prev"].astype(sd), valid),
             "v_prev": _last_real(v.astype(sd), state["v_prev"].astype(sd), valid)}
    lam_v = lam[..., None] * v.astype(sd)
    return (m_starts, g_starts, u, k_shift, lam_v), final


def read(q: Float[Array, "r t h dk"], k: Float[Array, "r t h dk"], gates: dict[str, Array], chunk_data,
         chunk: int) -> Float[Array, "r t h dv"]:
    """Online read-out ``o_t = M_t^T q_t = G_t^T q_t + l_t (q_t . k_t) v_t`` for every token."""
    _, g_starts, u, k_shift, lam_v = chunk_data
    sd = state_dtype()
    o = linear.read(q, k_shift, {"log_decay": gates["log_decay"]}, g_starts, u, chunk)
    return o + jnp.einsum("rthd,rthd->rth", q.astype(sd), k.astype(sd))[..., None] * lam_v
