"""Rung 2 of the ladder: for linear memory, Memory Caching is one T x T weight matrix (EVALUATION.md section 7).

``y = ((Q K^T) * causal * G) V`` with, for token ``t`` and key ``j`` in segment ``s(j)``:
    independent:  G[t, j] = gamma_on(t) if s(j) == s(t) else gamma_{t, s(j)}
    checkpoint:   G[t, j] = gamma_on(t) + sum_{s(j) <= i < s(t)} gamma_{t, i}
and gamma the softmax of ``<u_t, mean(K_i)>`` over the earlier segments and the causal online prefix (grm), or
all ones (residual).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mc_jax.ops import memory_caching
from tests.helpers.op_inputs import make_inputs
from tests.helpers.tolerances import assert_close


def quadratic_mc(q, k, v, u, size, aggregation, init):
    b, t, h, d = q.shape
    seg = np.arange(t) // size
    n = seg[-1] + 1
    onehot = jnp.asarray(seg[:, None] == np.arange(n)[None], q.dtype)  # t n
    seg_mean = jnp.einsum("tn,bthd->bnhd", onehot, k) / onehot.sum(0)[None, :, None, None]
    prefix = jnp.einsum("ts,bshd->bthd", jnp.asarray((seg[:, None] == seg[None]) & np.tri(t, dtype=bool), q.dtype), k)
    online_mean = prefix / jnp.asarray(np.arange(t) % size + 1, q.dtype)[None, :, None, None]
    earlier = jnp.asarray(np.arange(n)[None] < seg[:, None])  # t n
    if aggregation == "residual":
        gamma, gamma_on = jnp.broadcast_to(earlier, (b, h, t, n)).astype(q.dtype), jnp.ones((b, h, t), q.dtype)
    else:
        logits = jnp.where(earlier, jnp.einsum("bthd,bnhd->bhtn", u, seg_mean), -jnp.inf)
        full = jax.nn.softmax(jnp.concatenate([jnp.einsum("bthd,bthd->bht", u, online_mean)[..., None], logits], -1))
        gamma, gamma_on = full[..., 1:], full[..., 0]
    same = jnp.asarray(seg[:, None] == seg[None])  # t j
    by_key_segment = jnp.take(gamma, seg, axis=-1)  # b h t j: gamma_{t, s(j)}
    if init == "independent":
        weights = jnp.where(same, gamma_on[..., None], by_key_segment)
    else:
        tail = jnp.flip(jnp.cumsum(jnp.flip(gamma, -1), -1), -1)  # sum_{i >= s} gamma_{t, i}
        weights = gamma_on[..., None] + jnp.take(tail, seg, axis=-1) * ~same
    scores = jnp.einsum("bthd,bjhd->bhtj", q, k) * jnp.tri(t, dtype=q.dtype) * weights
    return jnp.einsum("bhtj,bjhv->bthv", scores, v)


@pytest.mark.parametrize("aggregation", ["residual", "grm", "soup"])
@pytest.mark.parametrize("init", ["independent", "checkpoint"])
@pytest.mark.parametrize("length,size", [(37, 5), (3, 8), (16, 1)])
def test_linear_mc_equals_quadratic_form(x64, aggregation, init, length, size):
    inputs = make_inputs("linear", length=length, initial_state=False)
    expected = quadratic_mc(inputs["q"], inputs["k"], inputs["v"], inputs["u"], size, aggregation, init)
    y = memory_caching(**inputs, aggregation=aggregation, init=init, segment_size=size)
    assert_close(y, expected, "float64")
