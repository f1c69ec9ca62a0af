"""Causal softmax attention with RoPE (Transformer++), optionally a sliding window, with a ring-buffer KV cache.

The KV cache holds the last ``S`` keys and values (``S = max_len`` for full attention, ``S = window`` for a sliding
window), so a decoding step costs ``O(S)`` whatever the number of generated tokens. A call with ``t`` new tokens
attends over ``[cache ++ new]`` with an explicit mask built from absolute positions, then writes the last
``min(t, S)`` new entries into their slots ``position % S``. Full attention beyond ``max_len`` tokens would
silently become a sliding window of ``max_len``; the generation API checks the length up front.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mc_jax.layers.mlp import dense
from mc_jax.layers.rope import apply_rope
from mc_jax.typing import Array, Float, Int


class KVCache(NamedTuple):
    """Ring buffer of keys / values ``[b, s, h, d]`` and the number of tokens seen (int32 scalar)."""

    k: Float[Array, "b s h d"]
    v: Float[Array, "b s h d"]
    position: Int[Array, ""]


def slot_positions(position: Int[Array, ""], size: int) -> Int[Array, " s"]:
    """Absolute position held by each ring slot after ``position`` tokens (``-1``-ish negative when empty)."""
    last = position - 1
    return last - jnp.mod(last - jnp.arange(size), size)


class Attention(nnx.Module):
    """Multi-head causal attention: ``softmax(q k^T / sqrt(d)) v`` with RoPE on q, k; ``window`` tokens if set."""

    def __init__(self, d_model: int, heads: int, *, window: int | None, rope_theta: float, rngs: nnx.Rngs,
                 std: float, out_std: float, dtype, param_dtype):
        self.heads, self.head_dim = heads, d_model // heads
        self.window, self.rope_theta, self.dtype = window, rope_theta, dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        inner = heads * self.head_dim
        self.q_proj = dense(d_model, inner, std=std, **kw)
        self.k_proj = dense(d_model, inner, std=std, **kw)
        self.v_proj = dense(d_model, inner, std=std, **kw)
        self.o_proj = dense(inner, d_model, std=out_std, **kw)

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        size = min(self.window, max_len) if self.window else max_len
        shape = (batch, size, self.heads, self.head_dim)
        dtype = self.dtype or jnp.float32
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))

    def __call__(
        self, x: Float[Array, "b t d"], cache: KVCache | None = None
    ) -> tuple[Float[Array, "b t d"], KVCache | None]:
        b, t, _ = x.shape
        split = lambda y: y.reshape(b, t, self.heads, self.head_dim)
        start = jnp.zeros((), jnp.int32) if cache is None else cache.position
        positions = start + jnp.arange(t, dtype=jnp.int32)
        q = apply_rope(split(self.q_proj(x)), positions, self.rope_theta)
        k = apply_rope(split(self.k_proj(x)), positions, self.rope_theta)
        v = split(self.v_proj(x))
        if cache is None:
            window = None if self.window is None else (self.window - 1, 0)
            y = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=window)
        else:
            y, cache = self._cached(q, k, v, positions, cache)
        return self.o_proj(y.reshape(b, t, -1)), cache

    def _cached(self, q, k, v, positions, cache: KVCache):
        size, t = cache.k.shape[1], q.shape[1]
        k_all = jnp.concatenate([cache.k, k.astype(cache.k.dtype)], axis=1)
        v_all = jnp.concatenate([cache.v, v.astype(cache.v.dtype)], axis=1)
        k_pos = jnp.concatenate([slot_positions(cache.position, size), positions])
        mask = (k_pos[None, :] >= 0) & (k_pos[None, :] <= positions[:, None])
        if self.window is not None:
            mask &= k_pos[None, :] > positions[:, None] - self.window
        y = jax.nn.dot_product_attention(q.astype(k_all.dtype), k_all, v_all, mask=mask[None, None])
        keep = min(t, size)  # only the newest `size` tokens can stay in the ring
        slots = jnp.mod(positions[t - keep :], size)
        new = KVCache(
            cache.k.at[:, slots].set(k_all[:, size + t - keep :]),
            cache.v.at[:, slots].set(v_all[:, size + t - keep :]),
            cache.position + t,
        )
        return y.astype(q.dtype), new
