"""Chunk-wise deep memories (``dla``, ``titans``): an MLP ``M_W(x) = x + W1 gelu(W2 x)`` trained at test time.

State per head: ``weights = {"W1": [d, f], "W2": [f, d]}`` (column convention: ``W2`` maps d -> f), for Titans also a
``momentum`` of the same structure, and ``reference``: the weights at the start of the current inner chunk, at
which every gradient of the chunk is taken (DESIGN.md section 2).

Per-token gradients at the chunk-start weights are outer products. For ``z = W2 k``, ``h = gelu(z)``,
``m = k + W1 h`` and ``delta = dl/dm`` (DLA: ``-v``; Titans: ``2 (m - v)``):
    grad_W1 = delta h^T,     grad_W2 = eps k^T,     eps = (W1^T delta) * gelu'(z).
With all gradients known, the recurrences have scalar coefficients. For Titans
(``S_t = e_t S_{t-1} - th_t G_t``, ``W_t = (1 - a_t) W_{t-1} + w_t S_t``; ``w_t = 0`` only on padding):
    W_t = alpha_t W_0 + beta_t S_0 - sum_{i<=t} C[t, i] G_i
    alpha_t = prod_{j<=t} (1 - a_j),   beta_t = sum_{m<=t} La[t, m] w_m Pe_m,   C = (La diag(w) Le) diag(th)
with ``La[t, m] = prod_{m<j<=t} (1 - a_j)``, ``Le[m, i] = prod_{i<j<=m} e_j``, ``Pe_m = prod_{j<=m} e_j``. DLA
(``W_t = (1 - a_t) W_{t-1} - th_t G_t``) is ``C = La diag(th)``, ``beta = 0``.

The read-out uses the exact per-token weights without materialising them (dual form): for an input ``x_t`` to a
layer, ``W_t x_t = alpha_t W_0 x_t + beta_t S_0 x_t - sum_i C[t, i] (a_i . x_t) d_i`` where ``(d_i, a_i)`` is the
outer-product pair of ``G_i`` -- masked matmuls, like linear attention.

Non-finite inputs stay causal (as in :mod:`~mc_jax.ops.memories.linear`): from the first token of a chunk with a
non-finite ``k``, ``v``, ``theta``, ``alpha`` or ``eta`` (or one outside its range, e.g. ``alpha > 1``) on, the
tokens are tainted: the chunk runs on finite identity values for them, their ``delta`` / ``eps`` rows are NaN (so
the chunk-end weights are NaN) and the read gives NaN for them, never for the tokens before them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mc_jax.ops.memories.linear import from_chunks, to_chunks
from mc_jax.ops.utils import bad_log_gate, bad_rows, decay_matrix, gelu_and_derivative, state_dtype, taint
from mc_jax.typing import Array, Float, PyTree


class DeepChunks(NamedTuple):
    """Everything the dual-form read needs, per chunk (leading axes ``[r, n, h]``)."""

    weights: PyTree  # chunk-start weights {"W1": [r n h d f], "W2": [r n h f d]}
    momentum: PyTree | None  # chunk-start momentum (Titans) or None
    keys: Array  # [r n h c d]   input of the W2 gradients
    hidden: Array  # [r n h c f]  input of the W1 gradients (gelu(z) at the reference weights)
    delta: Array  # [r n h c d]  output-side factor of the W1 gradients
    eps: Array  # [r n h c f]    output-side factor of the W2 gradients
    alpha: Array  # [r n h c]
    beta: Array  # [r n h c]
    coef: Array  # [r n h c c]   C[t, i]


def mlp(weights: PyTree, x: Float[Array, "... c d"]) -> Float[Array, "... c d"]:
    """``M_W(x) = x + W1 gelu(W2 x)`` with weights ``[..., d, f]`` / ``[..., f, d]``."""
    z = jnp.einsum("...fd,...cd->...cf", weights["W2"], x)
    return x + jnp.einsum("...df,...cf->...cd", weights["W1"], jax.nn.gelu(z))


def _chunk_coefficients(log_keep, write, theta, log_eta, momentum: bool):
    """``(alpha [r h c], beta [r h c], C [r h c c], Le | None)`` of one chunk (module docstring)."""
    keep = decay_matrix(log_keep)  # La
    alpha = jnp.exp(jnp.cumsum(log_keep, -1))
    if not momentum:
        return alpha, jnp.zeros_like(alpha), keep * theta[..., None, :], None
    mom_decay = decay_matrix(log_eta)  # Le
    coef = jnp.einsum("rhtm,rhm,rhmi->rhti", keep, write, mom_decay) * theta[..., None, :]
    beta = jnp.einsum("rhtm,rhm,rhm->rht", keep, write, jnp.exp(jnp.cumsum(log_eta, -1)))
    return alpha, beta, coef, mom_decay


def _untaint(kn, vn, th, lk, le):
    """Tokens of one chunk ``[r h c]`` from the first non-finite input on (:func:`taint`) and the inputs with their
    entries replaced by identity values (zero keys / values / step sizes / log gates), so no NaN enters a matmul."""
    bad = bad_rows(kn) | bad_rows(vn) | ~jnp.isfinite(th) | bad_log_gate(lk)
    if le is not None:
        bad = bad | bad_log_gate(le)
    tainted = taint(bad)
    kn, vn = jnp.where(tainted[..., None], 0.0, kn), jnp.where(tainted[..., None], 0.0, vn)
    th, lk = jnp.where(tainted, 0.0, th), jnp.where(tainted, 0.0, lk)
    le = None if le is None else jnp.where(tainted, 0.0, le)
    return tainted, kn, vn, th, lk, le


def _gradient_factors(ref, kn, vn, loss: str):
    """``(hid [r h c f], delta [r h c d], eps [r h c f])``: the per-token gradient of the inner loss at the chunk-start
    weights ``ref`` is ``delta (x) hid`` for W1 and ``eps (x) k`` for W2 (outer products)."""
    z = jnp.einsum("rhfd,rhcd->rhcf", ref["W2"], kn)
    hid, dgelu = gelu_and_derivative(z)
    m = kn + jnp.einsum("rhdf,rhcf->rhcd", ref["W1"], hid)
    delta = -vn if loss == "dla" else 2.0 * (m - vn)
    eps = jnp.einsum("rhdf,rhcd->rhcf", ref["W1"], delta) * dgelu
    return hid, delta, eps


def state_pass(
    k: Float[Array, "r t h d"],
    v: Float[Array, "r t h d"],
    gates: dict[str, Array],
    state: PyTree,
    chunk: int,
    valid: Array,
    *,
    loss: str,
    momentum: bool,
):
    """Sequential pass over inner chunks. Returns ``(DeepChunks, final_state)``.

    ``valid [r t h]`` marks real tokens; the reference weights move to the chunk end only when the chunk's last
    token is real, so a sequence that stops mid-chunk keeps the chunk-start reference for its continuation.
    """
    sd = state_dtype()
    kc = to_chunks(k.astype(sd), chunk)  # r n h c d
    vc = to_chunks(v.astype(sd), chunk)
    theta = to_chunks(gates["theta"].astype(sd), chunk)  # r n h c
    log_keep = jnp.log1p(-to_chunks(gates["alpha"].astype(sd), chunk))
    write = to_chunks(gates["write"].astype(sd), chunk)
    log_eta = jnp.log(to_chunks(gates["eta"].astype(sd), chunk)) if momentum else None
    last_valid = to_chunks(valid, chunk)[..., -1]  # r n h

    def step(carry, xs):
        w, s, ref = carry
        kn, vn, th, lk, wr, le, lv = xs
        tainted, kn, vn, th, lk, le = _untaint(kn, vn, th, lk, le)
        hid, delta, eps = _gradient_factors(ref, kn, vn, loss)
        delta, eps = (jnp.where(tainted[..., None], jnp.nan, x) for x in (delta, eps))
        alpha, beta, coef, mom_decay = _chunk_coefficients(lk, wr, th, le, momentum)

        def outer_sum(c):  # sum_i c_i G_i for both layers
            return {
                "W1": jnp.einsum("rhi,rhid,rhif->rhdf", c, delta, hid),
                "W2": jnp.einsum("rhi,rhif,rhid->rhfd", c, eps, kn),
            }

        grads_w = outer_sum(coef[..., -1, :])
        a_end, b_end = alpha[..., -1, None, None], beta[..., -1, None, None]
        if momentum:
            grads_s = outer_sum(mom_decay[..., -1, :] * th)
            e_end = jnp.exp(jnp.sum(le, -1))[..., None, None]
            w_new = jax.tree.map(lambda w0, s0, g: a_end * w0 + b_end * s0 - g, w, s, grads_w)
            s_new = jax.tree.map(lambda s0, g: e_end * s0 - g, s, grads_s)
        else:
            w_new = jax.tree.map(lambda w0, g: a_end * w0 - g, w, grads_w)
            s_new = s
        ref_new = jax.tree.map(lambda a, b: jnp.where(lv[..., None, None], a, b), w_new, ref)
        out = DeepChunks(w, s, kn, hid, delta, eps, alpha, beta, coef)
        return (w_new, s_new, ref_new), out

    swap = lambda x: None if x is None else jnp.moveaxis(x, 1, 0)
    xs = tuple(swap(x) for x in (kc, vc, theta, log_keep, write, log_eta, last_valid))
    cast = lambda tree: jax.tree.map(lambda a: a.astype(sd), tree)
    carry = (cast(state["weights"]), cast(state.get("momentum")), cast(state["reference"]))
    (w, s, ref), chunks = jax.lax.scan(step, carry, xs)
    chunks = jax.tree.map(swap, chunks)
    final = {"weights": w, "reference": ref}
    if momentum:
        final["momentum"] = s
    return chunks, final


def apply_layer(layer: str, x: Float[Array, "r n h c i"], chunks: DeepChunks) -> Float[Array, "r n h c o"]:
    """Apply the exact per-token weights of ``layer`` ("W1" or "W2") to per-token inputs ``x`` (dual form).

    Tokens whose gradient factors are NaN (tainted in :func:`state_pass`) get NaN outputs; their factors are replaced
    by zeros inside the matmuls, so no other token reads them.
    """
    tainted = taint(bad_rows(chunks.delta))[..., None]  # r n h c 1
    chunks = chunks._replace(delta=jnp.where(tainted, 0.0, chunks.delta), eps=jnp.where(tainted, 0.0, chunks.eps))
    if layer == "W2":
        base = jnp.einsum("rnhfd,rnhcd->rnhcf", chunks.weights["W2"], x)
        in_factor, out_factor = chunks.keys, chunks.eps
        mom = None if chunks.momentum is None else jnp.einsum("rnhfd,rnhcd->rnhcf", chunks.momentum["W2"], x)
    else:
        base = jnp.einsum("rnhdf,rnhcf->rnhcd", chunks.weights["W1"], x)
        in_factor, out_factor = chunks.hidden, chunks.delta
        mom = None if chunks.momentum is None else jnp.einsum("rnhdf,rnhcf->rnhcd", chunks.momentum["W1"], x)
    out = chunks.alpha[..., None] * base
    if mom is not None:
        out = out + chunks.beta[..., None] * mom
    scores = jnp.einsum("rnhti,rnhsi->rnhts", x, in_factor) * chunks.coef
    return jnp.where(tainted, jnp.nan, out - jnp.einsum("rnhts,rnhso->rnhto", scores, out_factor))


def read(q: Float[Array, "r t h d"], chunks: DeepChunks, chunk: int) -> Float[Array, "r t h d"]:
    """Online read-out ``o_t = M_{W_t}(q_t)`` with the exact per-token weights."""
    qc = to_chunks(q.astype(state_dtype()), chunk)
    hid = jax.nn.gelu(apply_layer("W2", qc, chunks))
    return from_chunks(qc + apply_layer("W1", hid, chunks))
