"""XLA reference of the cached-memory read: :func:`mc_jax.ops.reads.dense_mix` for linear memories."""

from __future__ import annotations

import jax.numpy as jnp

from mc_jax.ops import reads
from mc_jax.ops.memories import get_memory

LINEAR = get_memory("linear")  # every linear-family memory reads the same way: q^T S


def dense_mix(stack, gamma, x, block: int):
    """``y[t] = sum_m gamma[t, m] x_t^T S_m``; stack ``[b m h dk dv]``, gamma ``[b t h m]``, x ``[b t h dk]``."""
    return reads.dense_mix(LINEAR, "read", stack, gamma, x, block)


def selected_gamma(gamma, slot_idx, block: int):
    """``gamma`` with every slot not listed for a token's query block set to zero (what the sparse kernel reads).

    slot_idx ``[b h nq k]`` (int); gamma ``[b t h m]`` with ``t = nq * block``.
    """
    b, t, h, m = gamma.shape
    listed = jnp.any(slot_idx[..., None] == jnp.arange(m), axis=-2)  # b h nq m
    listed = jnp.repeat(jnp.moveaxis(listed, 1, 2), block, axis=1)  # b t h m
    return jnp.where(listed, gamma, 0.0)


def sparse_mix(stack, gamma, x, slot_idx, block: int):
    """Reference of the sparse read: the dense read of :func:`selected_gamma`."""
    return dense_mix(stack, selected_gamma(gamma, slot_idx, block), x, block)
