"""Aggregation weights: how a token mixes its online memory with the cached ones (DESIGN.md 3.3).

Every strategy maps the logits of the cached memories (``<u_t, pool(K_i)>``, masked by availability) and of the
online memory to weights ``gamma``:
    residual  gamma = 1 for every available memory (no parameters, logits unused)
    grm/soup  gamma = softmax over the available cached memories and the online one
    ssc       keep the ``top_k`` largest available cached logits (and always the online one), softmax over those
Soup differs from grm only in what the weights multiply (parameters instead of read-outs), not in the weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mc_jax.typing import Array, Bool, Float

AGGREGATIONS = ("residual", "grm", "soup", "ssc")
GATED = ("grm", "soup", "ssc")
POOLS = ("mean", "sum")


def pool_keys(key_sum: Float[Array, "... dk"], count: Float[Array, "... 1"], pool: str) -> Float[Array, "... dk"]:
    """``pool(K)`` of a segment from its key sum and token count (``count`` broadcasts against ``key_sum``)."""
    return key_sum / jnp.maximum(count, 1) if pool == "mean" else key_sum


def logits(u: Float[Array, "... dk"], pooled_keys: Float[Array, "... m dk"]) -> Float[Array, "... m"]:
    """Router / gate logits ``<u_t, pool(K_i)>`` (no ``1/sqrt(d)`` scale)."""
    return jnp.einsum("...d,...md->...m", u, pooled_keys)


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
    """Return ``(gamma_cached, gamma_online)``; unavailable cached memories get exactly zero weight."""
    if aggregation == "residual":
        return available.astype(jnp.result_type(float)), jnp.ones(available.shape[:-1], jnp.result_type(float))
    keep = topk_mask(cached_logits, available, top_k) if aggregation == "ssc" else available
    full = jnp.concatenate([online_logit[..., None], jnp.where(keep, cached_logits, -jnp.inf)], axis=-1)
    gamma = jax.nn.softmax(full, axis=-1)
    return jnp.where(keep, gamma[..., 1:], 0.0), gamma[..., 0]
