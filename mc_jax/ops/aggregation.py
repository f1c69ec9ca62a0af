"""Aggregation weights: how a token mixes its online memory with the cached ones (DESIGN.md 3.3).

Every strategy maps the logits of the cached memories (``<u_t, pool(K_i)>``, masked by availability) and of the
online memory to weights ``gamma``:
    residual  gamma = 1 for every available memory (no parameters, logits unused)
    grm/soup  gamma = softmax over the available cached memories and the online one
    ssc       keep the ``top_k`` largest available cached logits (and always the online one), softmax over those
    token     token-only gates (the ablation "without context-dependent gamma"): the online memory's logit is a
              per-token scalar ``z_t = x_t w`` (``u`` of width 1), every cached memory's logit is 0 -- softmax over
              ``[z_t, 0, ..., 0]``: the token sets how much it trusts the online memory against the cache, never
              which cached memory (no segment's keys enter)
    uniform   gamma = 1 / (n_available + 1) for the online memory and every available cached one (no parameters)
Soup differs from grm only in what the weights multiply (parameters instead of read-outs), not in the weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mc_jax.typing import Array, Bool, Float

AGGREGATIONS = ("residual", "grm", "soup", "ssc", "token", "uniform")
CONTENT = ("grm", "soup", "ssc")  # logits <u_t, pool(K_i)>: u is [..., dk]
GATED = CONTENT + ("token",)  # need u (token: [..., 1], the online memory's logit)
POOLS = ("mean", "sum")


def pool_keys(key_sum: Float[Array, "... dk"], count: Float[Array, "... 1"], pool: str) -> Float[Array, "... dk"]:
    """``pool(K)`` of a segment from its key sum and token count (``count`` broadcasts against ``key_sum``)."""
    return key_sum / jnp.maximum(count, 1) if pool == "mean" else key_sum


def logits(u: Float[Array, "... dk"], pooled_keys: Float[Array, "... m dk"]) -> Float[Array, "... m"]:
    """Router / gate logits ``<u_t, pool(K_i)>`` (no ``1/sqrt(d)`` scale)."""
    return jnp.einsum("...d,...md->...m", u, pooled_keys)


def online_logit(aggregation: str, u: Float[Array, "... w"] | None,
                 online_pooled: Float[Array, "... dk"]) -> Float[Array, "..."] | None:
    """The online memory's logit: ``<u_t, pool(K_on up to t)>``, or ``z_t = u_t[0]`` for ``token`` gates."""
    if u is None:
        return None
    if aggregation == "token":
        return u[..., 0]
    return jnp.einsum("...d,...d->...", u, online_pooled)


def content_u(aggregation: str, u: Array | None) -> Array | None:
    """``u`` where the cached memories' logits come from their pooled keys; ``None`` (no cached logits) otherwise."""
    return u if aggregation in CONTENT else None


def topk_mask(scores: Float[Array, "... m"], available: Bool[Array, "... m"], top_k: int) -> Bool[Array, "... m"]:
    """The ``top_k`` largest available scores (all available ones when fewer exist)."""
    m = scores.shape[-1]
    if top_k >= m:
        return available
    masked = jnp.where(available, scores, -jnp.inf)
    _, index = jax.lax.top_k(jax.lax.stop_gradient(masked), top_k)
    chosen = jnp.any(index[..., :, None] == jnp.arange(m), axis=-2)
    return chosen & available


def weights(
    aggregation: str,
    cached_logits: Float[Array, "... m"] | None,
    online_logit: Float[Array, "..."] | None,
    available: Bool[Array, "... m"],
    top_k: int | None = None,
) -> tuple[Float[Array, "... m"], Float[Array, "..."]]:
    """Return ``(gamma_cached, gamma_online)``; unavailable cached memories get exactly zero weight.

    ``cached_logits`` is unused by ``residual``, ``uniform`` and ``token`` (pass ``None``), ``online_logit`` by the
    first two.
    """
    dtype = jnp.result_type(float)
    if aggregation == "residual":
        return available.astype(dtype), jnp.ones(available.shape[:-1], dtype)
    if aggregation == "uniform":
        share = 1.0 / (1.0 + jnp.sum(available, axis=-1, dtype=dtype))
        return jnp.where(available, share[..., None], 0.0), share
    if aggregation == "token":
        cached_logits = jnp.zeros(available.shape, online_logit.dtype)
    keep = topk_mask(cached_logits, available, top_k) if aggregation == "ssc" else available
    full = jnp.concatenate([online_logit[..., None], jnp.where(keep, cached_logits, -jnp.inf)], axis=-1)
    gamma = jax.nn.softmax(full, axis=-1)
    return jnp.where(keep, gamma[..., 1:], 0.0), gamma[..., 0]
