"""The vectorised PyTorch code of ``benchmarks/torch_reference.py``, ported line for line to ``jax.numpy``.

``benchmarks/bench_torch.py`` times it under ``jax.jit`` beside mc_jax and torch. It separates the two causes a gap
between mc_jax and the torch script can have: mc_jax's algorithms and layout (then this port, the same dense einsums
as the torch code, is faster than mc_jax under the same compiler) or the backend (then this port is as slow as mc_jax
and torch is faster: XLA:CPU against PyTorch's ATen / oneDNN kernels for the same einsums). The equations, the
layout and the padding are those of the torch module (read its docstring); tests/benchmarks/test_references.py
checks it against ``mc_jax.ops.memory_caching`` in float64, outputs and gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

AGGREGATIONS = ("grm", "residual")  # the choices of both references (torch_reference imports them from here)
INITS = ("independent", "checkpoint")
POOLS = ("mean", "sum")


def _segments(x: jax.Array, c: int) -> jax.Array:
    """``[B, T, H, D] -> [B, N, C, H, D]``, zero-padding the last segment."""
    b, t, h, d = x.shape
    n = -(-t // c)
    return jnp.pad(x, ((0, 0), (0, n * c - t), (0, 0), (0, 0))).reshape(b, n, c, h, d)


def memory_caching_linear(q, k, v, u=None, *, aggregation="grm", segment_size=64, init="independent", pool="mean",
                          s0=None) -> jax.Array:
    """MC over the linear memory, as :func:`benchmarks.torch_reference.memory_caching_linear`; ``y [B, T, H, Dv]``."""
    if aggregation not in AGGREGATIONS or init not in INITS or pool not in POOLS:
        raise ValueError(f"aggregation / init / pool must be in {AGGREGATIONS} / {INITS} / {POOLS}; "
                         f"got {aggregation!r} / {init!r} / {pool!r}")
    length, c = q.shape[1], segment_size
    qs, ks, vs = _segments(q, c), _segments(k, c), _segments(v, c)  # b n c h d
    n = qs.shape[1]
    seg_states = jnp.einsum("bnchk,bnchv->bnhkv", ks, vs)
    if s0 is None:
        s0 = jnp.zeros((q.shape[0], q.shape[2], q.shape[3], v.shape[3]), q.dtype)
    if init == "independent":
        cached, before = seg_states + s0[:, None], jnp.broadcast_to(s0[:, None], seg_states.shape)
    else:
        cached = s0[:, None] + jnp.cumsum(seg_states, axis=1)
        before = jnp.concatenate([s0[:, None], cached[:, :-1]], axis=1)
    causal = jnp.tril(jnp.ones((c, c), bool))
    scores = jnp.where(causal, jnp.einsum("bnchk,bndhk->bnhcd", qs, ks), 0.0)
    y_on = jnp.einsum("bnhcd,bndhv->bnchv", scores, vs) + jnp.einsum("bnchk,bnhkv->bnchv", qs, before)
    visible = jnp.tril(jnp.ones((n, n), bool), -1)  # segment n reads cached i < n
    if aggregation == "residual":
        cached_sum = jnp.einsum("ni,bihkv->bnhkv", visible.astype(q.dtype), cached)
        y = y_on + jnp.einsum("bnchk,bnhkv->bnchv", qs, cached_sum)
    else:
        us = _segments(u, c)
        counts = jnp.arange(1, c + 1, dtype=q.dtype)[:, None, None]
        key_on = jnp.cumsum(ks, axis=2) / (counts if pool == "mean" else 1.0)
        key_cached = ks.sum(axis=2) / (c if pool == "mean" else 1.0)
        logit_on = jnp.einsum("bnchk,bnchk->bnch", us, key_on)
        logits = jnp.where(visible[None, :, None, None, :], jnp.einsum("bnchk,bihk->bnchi", us, key_cached), -jnp.inf)
        gamma = jax.nn.softmax(jnp.concatenate([logit_on[..., None], logits], axis=-1), axis=-1)
        reads = jnp.einsum("bnchk,bihkv->bnchiv", qs, cached)
        y = gamma[..., 0, None] * y_on + jnp.einsum("bnchi,bnchiv->bnchv", gamma[..., 1:], reads)
    return y.reshape(q.shape[0], n * c, q.shape[2], v.shape[3])[:, :length]
