"""Base memories alone (one segment): the chunk-wise forms against per-token recurrences.

With ``segment_size >= T`` Memory Caching has nothing cached, so the op is exactly the base memory.
The references here are written independently of ``mc_jax.ops``: plain per-token loops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mc_jax.ops import memory_caching
from tests.helpers.op_inputs import MEMORY_NAMES, make_inputs
from tests.helpers.tolerances import assert_close


def reference_base_memory(memory, q, k, v, gates, params, chunk):
    """Per-token loop over one sequence (``[b, t, h, d]``), the textbook recurrence of each memory."""
    b, t, h, dk = q.shape
    outs = []
    if memory in ("dla", "titans"):
        def loss(w, kk, vv):
            m = kk + w["W1"] @ jax.nn.gelu(w["W2"] @ kk)
            return -m @ vv if memory == "dla" else jnp.sum((m - vv) ** 2)

        grad = jax.vmap(jax.vmap(jax.grad(loss)))
        w = jax.tree.map(lambda p: jnp.broadcast_to(p, (b,) + p.shape), params)
        mom = jax.tree.map(jnp.zeros_like, w)
        ref = w
        for i in range(t):
            if i % chunk == 0:
                ref = w
            g = grad(ref, k[:, i], v[:, i])
            col = lambda name: gates[name][:, i, :, None, None]
            if memory == "titans":
                mom = jax.tree.map(lambda s, gg: col("eta") * s - col("theta") * gg, mom, g)
                w = jax.tree.map(lambda ww, s: (1 - col("alpha")) * ww + s, w, mom)
            else:
                w = jax.tree.map(lambda ww, gg: (1 - col("alpha")) * ww - col("theta") * gg, w, g)
            hid = jax.nn.gelu(jnp.einsum("bhfd,bhd->bhf", w["W2"], q[:, i]))
            outs.append(q[:, i] + jnp.einsum("bhdf,bhf->bhd", w["W1"], hid))
        return jnp.stack(outs, 1)
    s = params if params is not None else jnp.zeros((b, h, dk, v.shape[-1]), q.dtype)
    for i in range(t):
        decay = jnp.exp(gates.get("log_decay", jnp.zeros((b, t, h), q.dtype))[:, i])[..., None, None]
        kv = jnp.einsum("bhk,bhv->bhkv", k[:, i], v[:, i])
        if memory == "delta":
            beta = gates["beta"][:, i, :, None, None]
            s = decay * (s - beta * jnp.einsum("bhk,bhj,bhjv->bhkv", k[:, i], k[:, i], s)) + beta * kv
        else:
            s = decay * s + kv
        outs.append(jnp.einsum("bhk,bhkv->bhv", q[:, i], s))
    return jnp.stack(outs, 1)


@pytest.mark.parametrize("memory", MEMORY_NAMES)
@pytest.mark.parametrize("length,chunk", [(37, 8), (5, 4), (16, 16)])
def test_chunk_form_equals_recurrence_float64(x64, memory, length, chunk):
    inputs = make_inputs(memory, length=length)
    expected = reference_base_memory(memory, inputs["q"], inputs["k"], inputs["v"], inputs["gates"],
                                     inputs["params"], chunk)
    y = memory_caching(**inputs, memory=memory, segment_size=48, chunk_size=chunk)
    assert_close(y, expected, "float64", memory)


@pytest.mark.parametrize("memory", MEMORY_NAMES)
def test_chunk_form_float32(memory):
    inputs = make_inputs(memory, length=37, dtype=jnp.float32)
    with jax.enable_x64(True):
        ref_inputs = jax.tree.map(lambda x: x.astype(jnp.float64), inputs)
        expected = reference_base_memory(memory, ref_inputs["q"], ref_inputs["k"], ref_inputs["v"],
                                         ref_inputs["gates"], ref_inputs["params"], 8)
    y = memory_caching(**inputs, memory=memory, segment_size=48, chunk_size=8)
    assert y.dtype == jnp.float32
    assert_close(y, expected, "float32", memory)


@pytest.mark.parametrize("memory", MEMORY_NAMES)
def test_gradients_match_recurrence(x64, memory):
    inputs = make_inputs(memory, batch=1, length=11)
    cot = jax.random.normal(jax.random.key(1), inputs["v"].shape[:3] + (inputs["v"].shape[-1],), jnp.float64)

    def loss_fast(args):
        return jnp.sum(cot * memory_caching(**args, memory=memory, segment_size=12, chunk_size=4))

    def loss_ref(args):
        return jnp.sum(cot * reference_base_memory(memory, args["q"], args["k"], args["v"], args["gates"],
                                                   args["params"], 4))

    g_fast, g_ref = jax.grad(loss_fast)(inputs), jax.grad(loss_ref)(inputs)
    for path, a, b in zip(jax.tree_util.tree_leaves_with_path(g_fast), jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
        assert_close(a, b, "float64", f"{memory} grad {jax.tree_util.keystr(path[0])}")


def test_gate_of_exactly_zero_is_exact(x64):
    """A decay gate of 0 (``log_decay = -inf``) wipes the state: no NaN from ``-inf - -inf``."""
    inputs = make_inputs("gated_linear", length=9)
    inputs["gates"]["log_decay"] = inputs["gates"]["log_decay"].at[:, 4].set(-jnp.inf)
    y = memory_caching(**inputs, memory="gated_linear", segment_size=16, chunk_size=8)
    expected = reference_base_memory("gated_linear", inputs["q"], inputs["k"], inputs["v"], inputs["gates"],
                                     inputs["params"], 8)
    assert jnp.all(jnp.isfinite(y))
    assert_close(y, expected, "float64")
