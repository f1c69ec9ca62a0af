"""The language-model loss and token statistics shared by training and evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mc_jax.data import IGNORE_INDEX


def token_stats(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Summed cross-entropy, labelled-token count, correct argmax count, and per-row "all labels right"."""
    mask = labels != IGNORE_INDEX
    safe = jnp.where(mask, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    right = (jnp.argmax(logits, axis=-1) == safe) & mask
    return {
        "loss_sum": jnp.sum(jnp.where(mask, ce, 0.0)),
        "count": jnp.sum(mask).astype(jnp.float32),
        "correct": jnp.sum(right).astype(jnp.float32),
        "row_exact": jnp.all(right | ~mask, axis=-1) & jnp.any(mask, axis=-1),
        "row_has_label": jnp.any(mask, axis=-1),
    }


def mean_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The training loss: mean next-token cross-entropy (nats) over the labelled positions of ``labels`` ``[B, T]``
    (``IGNORE_INDEX`` = no target) for ``logits`` ``[B, T, V]``; see :func:`token_stats` for the sums."""
    stats = token_stats(logits, labels)
    return stats["loss_sum"] / jnp.maximum(stats["count"], 1.0)


__all__ = ["mean_loss", "token_stats"]
