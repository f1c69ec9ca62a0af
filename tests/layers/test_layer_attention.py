"""Causal / sliding-window attention: against an explicit softmax, and the ring-buffer KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mc_jax.layers.attention import Attention, slot_positions
from mc_jax.layers.rope import apply_rope
from tests.helpers.tolerances import assert_allclose


def make(window):
    return Attention(16, 2, window=window, rope_theta=10000.0, rngs=nnx.Rngs(0), std=0.3, out_std=0.3,
                     dtype=jnp.float32, param_dtype=jnp.float32)


def reference(attn, x, window):
    b, t, _ = x.shape
    split = lambda y: y.reshape(b, t, 2, 8)
    pos = jnp.arange(t)
    q, k = apply_rope(split(attn.q_proj(x)), pos), apply_rope(split(attn.k_proj(x)), pos)
    v = split(attn.v_proj(x))
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(8.0)
    allowed = pos[None, :] <= pos[:, None]
    if window:
        allowed &= pos[None, :] > pos[:, None] - window
    p = jax.nn.softmax(jnp.where(allowed, s, -jnp.inf), -1)
    return attn.o_proj(jnp.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, t, 16))


@pytest.mark.parametrize("window", [None, 3])
def test_attention_matches_reference_and_streams(window):
    attn = make(window)
    x = jax.random.normal(jax.random.key(0), (2, 11, 16))

    @jax.jit
    def run(x):
        y, _ = attn(x)
        cache = attn.init_cache(2, 11)
        parts = []
        for a, b in ((0, 5), (5, 6), (6, 7), (7, 11)):  # prefill longer than the window, steps, a block
            out, cache = attn(x[:, a:b], cache)
            parts.append(out)
        return y, reference(attn, x, window), jnp.concatenate(parts, 1), cache

    y, ref, ys, cache = run(x)
    assert_allclose(y, ref, "float32")
    assert_allclose(ys, y, "float32")
    assert int(cache.position) == 11
    assert cache.k.shape[1] == (3 if window else 11)  # a sliding window keeps only `window` slots


def test_ring_slot_positions():
    np.testing.assert_array_equal(slot_positions(jnp.int32(5), 8), [0, 1, 2, 3, 4, -3, -2, -1])
    np.testing.assert_array_equal(slot_positions(jnp.int32(10), 8), [8, 9, 2, 3, 4, 5, 6, 7])
