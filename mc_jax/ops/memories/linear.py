"""Chunk-wise linear memories: ``linear``, ``gated_linear`` and the gated delta rule (``delta``).

All three share one algorithm. With chunk size ``c``, inside a chunk write ``G_i = exp(sum_{m<=i} g_m)`` for the
cumulative decay, ``D[i, j] = G_i / G_j`` (``i >= j``) and ``S_0`` for the state at the chunk start.

Delta rule (``S_t = e^{g_t} (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T``). Write ``S_t = e^{g_t} S_{t-1} + k_t u_t^T``
with ``u_t = b_t (v_t - e^{g_t} S_{t-1}^T k_t)``. Unrolling ``S_{t-1}`` inside the chunk gives the lower-triangular
system ``(I + L) U = diag(b) V - diag(b G) K S_0`` with ``L[t, i] = b_t D[t, i] k_t.k_i`` for ``i < t``, i.e. the WY/UT
form ``U = U_hat - W S_0`` with ``A = (I + L)^{-1}``, ``U_hat = A (b * V)``, ``W = A (b G * K)``; ``A`` is applied by an
exact unit-lower-triangular inverse (``unit_lower_inverse``: matmuls only, no truncation). (Gated) linear attention is
the special case ``u_t = v_t`` (no solve).

Then, for every chunk, with ``D`` masked causally (diagonal included):
    S_end = G_c S_0 + (K * G_c / G)^T U          (sequential pass over chunks: ``state_pass``)
    O     = (Q * G) S_0 + ((Q K^T) * D) U        (parallel over chunks: ``read``)
Padding (``k = 0, b = 0, g = 0``) makes a token an identity step.

Non-finite inputs stay causal: the tokens of a chunk from its first non-finite ``k``, ``v``, ``beta`` or
``log_decay`` (NaN or ``+inf``) on are *tainted* (:func:`~mc_jax.ops.utils.taint`): the chunk form runs on finite
identity values for them, their ``U`` rows are NaN (so the chunk-end state, which includes them, is NaN), and the
read gives NaN for them; tokens before them never meet a ``0 * nan`` product in a matmul.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mc_jax.ops.utils import bad_log_gate, bad_rows, decay_matrix, state_dtype, taint, unit_lower_inverse
from mc_jax.typing import Array, Float


def to_chunks(x: Array, chunk: int) -> Array:
    """``[r, t, h, ...] -> [r, n, h, c, ...]`` (token axis split into chunks, heads before tokens)."""
    r, t = x.shape[:2]
    x = x.reshape(r, t // chunk, chunk, *x.shape[2:])
    return jnp.moveaxis(x, 2, 3)


def from_chunks(x: Array) -> Array:
    """Inverse of :func:`to_chunks`."""
    x = jnp.moveaxis(x, 3, 2)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _prepare(k, v, gates, chunk):
    sd = state_dtype()
    kc = to_chunks(k.astype(sd), chunk)  # r n h c dk
    vc = to_chunks(v.astype(sd), chunk)  # r n h c dv
    g = to_chunks(gates["log_decay"].astype(sd), chunk)  # r n h c
    return kc, vc, g


def chunk_terms(k: Float[Array, "r t h dk"], v: Float[Array, "r t h dv"], gates: dict[str, Array], chunk: int):
    """The parallel (over chunks) part of the state pass.

    Returns ``(k_to_end [r n h c dk], u_hat [r n h c dv], w [r n h c dk] | None, total [r n h])``: keys decayed to the
    chunk end, ``U_hat = A (b V)`` (``V`` without the delta rule), ``W = A (b G K)`` (delta only) and the log decay of
    the whole chunk. The Pallas chunk-state kernel takes these as inputs.
    """
    kc, vc, g = _prepare(k, v, gates, chunk)
    beta = None if "beta" not in gates else to_chunks(gates["beta"].astype(kc.dtype), chunk)  # r n h c
    bad = bad_rows(kc) | bad_rows(vc) | bad_log_gate(g)
    if beta is not None:
        bad = bad | ~jnp.isfinite(beta)
    tainted = taint(bad)  # r n h c
    kc, vc, g = (jnp.where(tainted[..., None], 0.0, kc), jnp.where(tainted[..., None], 0.0, vc),
                 jnp.where(tainted, 0.0, g))
    poison = lambda x: jnp.where(tainted[..., None], jnp.nan, x)  # U rows of tainted tokens: NaN
    cum = jnp.cumsum(g, axis=-1)  # r n h c
    total = cum[..., -1]  # r n h
    # decay from token i to the chunk end, sum_{m > i} g_m, as a reverse cumsum (no -inf - -inf at a zero gate)
    after = jnp.concatenate([g[..., 1:], jnp.zeros_like(g[..., :1])], axis=-1)
    k_to_end = kc * jnp.exp(jnp.flip(jnp.cumsum(jnp.flip(after, -1), -1), -1))[..., None]
    if beta is None:
        return k_to_end, poison(vc), None, total
    beta = jnp.where(tainted, 0.0, beta)
    kk = jnp.einsum("rnhid,rnhjd->rnhij", kc, kc)
    system = jnp.tril(beta[..., :, None] * kk * decay_matrix(g), -1) + jnp.eye(chunk, dtype=kc.dtype)
    inverse = unit_lower_inverse(system)  # exact; shared by both right-hand sides
    w = inverse @ ((beta * jnp.exp(cum))[..., None] * kc)
    u_hat = inverse @ (beta[..., None] * vc)
    return k_to_end, poison(u_hat), w, total


def scan_chunks(terms, state: Float[Array, "r h dk dv"]):
    """The sequential part of the state pass over :func:`chunk_terms`: ``(starts, u, final)``."""
    k_to_end, u_hat, w, total = terms

    def step(s, xs):
        k_end, u_h, w_n, a_n = xs
        u = u_h if w_n is None else u_h - jnp.einsum("rhcd,rhdv->rhcv", w_n, s)
        s_new = jnp.exp(a_n)[..., None, None] * s + jnp.einsum("rhcd,rhcv->rhdv", k_end, u)
        return s_new, (s, u)

    swap = lambda x: None if x is None else jnp.moveaxis(x, 1, 0)
    final, (starts, u) = jax.lax.scan(step, state.astype(k_to_end.dtype),
                                      (swap(k_to_end), swap(u_hat), swap(w), swap(total)))
    return swap(starts), swap(u), final


def state_pass(
    k: Float[Array, "r t h dk"],
    v: Float[Array, "r t h dv"],
    gates: dict[str, Array],
    state: Float[Array, "r h dk dv"],
    chunk: int,
    valid: Array | None = None,
):
    """Sequential pass over chunks.

    Returns ``(chunk_states [r n h dk dv], u [r n h c dv], final_state [r h dk dv])``: the state at the start of each
    chunk, the effective values ``U`` of the chunk form and the state after the last token.
    """
    del valid  # padded tokens are identity steps through k = 0, beta = 0, log_decay = 0
    return scan_chunks(chunk_terms(k, v, gates, chunk), state)


def read(
    q: Float[Array, "r t h dk"],
    k: Float[Array, "r t h dk"],
    gates: dict[str, Array],
    chunk_states: Float[Array, "r n h dk dv"],
    u: Float[Array, "r n h c dv"],
    chunk: int,
) -> Float[Array, "r t h dv"]:
    """Online read-out ``o_t = S_t^T q_t`` for every token, parallel over chunks (NaN for tainted tokens: a
    non-finite ``k`` or ``log_decay`` here, or a NaN row of ``u`` from :func:`chunk_terms`)."""
    sd = state_dtype()
    qc = to_chunks(q.astype(sd), chunk)
    kc = to_chunks(k.astype(sd), chunk)
    g = to_chunks(gates["log_decay"].astype(sd), chunk)
    tainted = taint(bad_rows(kc) | bad_log_gate(g) | bad_rows(u))
    kc, g, u = (jnp.where(tainted[..., None], 0.0, kc), jnp.where(tainted, 0.0, g),
                jnp.where(tainted[..., None], 0.0, u))
    decay = decay_matrix(g)
    inter = jnp.einsum("rnhcd,rnhdv->rnhcv", qc * jnp.exp(jnp.cumsum(g, -1))[..., None], chunk_states)
    scores = jnp.einsum("rnhid,rnhjd->rnhij", qc, kc) * decay
    out = inter + jnp.einsum("rnhij,rnhjv->rnhiv", scores, u)
    return from_chunks(jnp.where(tainted[..., None], jnp.nan, out))


def read_state(state: Float[Array, "... dk dv"], q: Float[Array, "... c dk"]) -> Float[Array, "... c dv"]:
    """Read a (cached) linear memory: ``q^T S``."""
    return jnp.einsum("...ck,...kv->...cv", q, state)
