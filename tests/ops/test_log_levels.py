"""Log segmentation's per-level read (``mc_jax.ops.segmentation.odd_runs``, ``reads.blocked_mix``,
``reads_causal.residual_blocked_read``, ``stages.Compressed.level_memories``) against the obvious per-token forms.

The per-level layout reads level ``p`` only on the odd halves of its group pairs; the references gather every
(token, slot) memory by the Fenwick slots (``segmentation.fenwick_slots``) and mix them with the weights. Block counts
are not powers of two (the last pair of a level is cut), with several levels; outputs and gradients of every input in
float64 and float32, and end to end against the per-token definition (``impl="naive"``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mc_jax.ops import memory_caching
from mc_jax.ops.memories import get_memory
from mc_jax.ops.reads import blocked_mix
from mc_jax.ops.reads_causal import residual_blocked_read
from mc_jax.ops.segmentation import fenwick_slots, from_odd_runs, num_levels, odd_runs, read_groups
from tests.helpers.op_inputs import make_inputs, mc_kwargs
from tests.helpers.tolerances import assert_close, check_read

B, H, DK, DV, F = 2, 2, 4, 3, 5
SIZE, NB = 2, 11  # 11 blocks of 2 tokens: 4 levels, every level's last pair cut


@pytest.mark.parametrize("n_blocks", [1, 2, 11, 13])
def test_odd_runs_are_the_blocks_where_a_level_is_present(n_blocks):
    """Token ``t`` of block ``c`` lands in pair ``c >> (p + 1)`` of level ``p`` exactly when bit ``p`` of ``c`` is
    set (the Fenwick slot is present), that pair's memory is the slot's group ``(c >> p) - 1``, and the runs are
    exactly :func:`read_groups` (the last one cut at the end of the sequence)."""
    levels, t = num_levels(n_blocks), n_blocks * SIZE
    slots = fenwick_slots(n_blocks, levels)
    token = jnp.arange(t)[None]  # 1 t
    for p in range(levels):
        span = SIZE << p
        whole, tail = odd_runs(token + 1, span)  # + 1: token 0 is not a zero
        runs = [r for r in (whole, tail) if r is not None]
        assert sum(r.shape[1] for r in runs) == read_groups(n_blocks, p)
        present, group = (np.asarray(a[np.arange(t) // SIZE, p]) for a in (slots.present, slots.group))
        if not runs:  # one block: nothing to read
            assert not present.any()
            continue
        f = 0 if whole is None else whole.shape[1]  # the tail is pair f
        pair = from_odd_runs(None if whole is None else jnp.broadcast_to(jnp.arange(f)[None, :, None], whole.shape),
                             None if tail is None else jnp.full(tail.shape, f), t)[0]
        round_trip = np.asarray(from_odd_runs(whole, tail, t)[0])
        np.testing.assert_array_equal(round_trip, np.where(present, token[0] + 1, 0))
        np.testing.assert_array_equal(2 * np.asarray(pair)[present], group[present])


def _stacks(family: str, dtype, seed=0):
    """Random per-level stacks (leaves ``[b, g_p, h, ...]``), inputs and weights that are zero where absent."""
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    normal = lambda shape: jax.random.normal(next(keys), shape, dtype)
    levels, t = num_levels(NB), NB * SIZE
    if family == "linear":
        stacks = [normal((B, read_groups(NB, p), H, DK, DV)) for p in range(levels)]
        x = normal((B, t, H, DK))
    else:
        stacks = [{"W1": 0.5 * normal((B, read_groups(NB, p), H, DK, F)),
                   "W2": 0.5 * normal((B, read_groups(NB, p), H, F, DK))} for p in range(levels)]
        x = normal((B, t, H, DK))
    present = fenwick_slots(NB, levels).present[jnp.arange(t) // SIZE]  # t m
    gamma = jnp.where(present[None, :, None], jax.nn.softmax(normal((B, t, H, levels)), -1), 0.0)
    return dict(stacks=stacks, x=x, gamma=gamma)


def _per_token_reference(spec, what, a):
    """The obvious form: every token's slot memories gathered (``[b, t, m, h, ...]``), each read, gamma-weighted."""
    stacks, x, gamma = a["stacks"], a["x"], a["gamma"]
    t, levels = x.shape[1], len(stacks)
    pair = (jnp.arange(t) // SIZE)[:, None] >> (jnp.arange(levels)[None] + 1)  # t m
    gathered = [jax.tree.map(lambda s, p=p: s[:, pair[:, p]], stacks[p])
                for p in range(levels)]  # leaves b t h ...
    out = spec.family.map_residual(what, x, gamma.sum(-1))
    for p, memory in enumerate(gathered):
        maps = spec.family.apply_map("blocked", what, memory, x[:, :, None])[:, :, 0]  # runs of one token
        out = out + gamma[..., p, None] * jnp.where(gamma[..., p, None] != 0, maps, 0.0)
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("memory,what", [("linear", "read"), ("titans", "read"), ("titans", "W1")])
def test_blocked_mix_equals_per_token_gather(x64, dtype, memory, what):
    spec = get_memory(memory)
    a = _stacks(spec.family.name, dtype)
    if what == "W1":  # W1 maps the hidden layer
        a["x"] = jax.random.normal(jax.random.key(3), a["x"].shape[:3] + (F,), dtype)
    fast = lambda a: (blocked_mix(spec, what, a["stacks"], a["gamma"], a["x"], SIZE),)
    check_read(fast, lambda a: (_per_token_reference(spec, what, a),), a, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_residual_blocked_read_equals_blocked_mix(x64, dtype):
    spec = get_memory("linear")
    a = _stacks("linear", dtype, seed=1)
    a["gamma"] = (a["gamma"] > 0).astype(dtype)  # residual: weight 1 on every present level
    fast = lambda a: (residual_blocked_read(a["stacks"], a["x"], SIZE),)
    check_read(fast, lambda a: (blocked_mix(spec, "read", a["stacks"], jax.lax.stop_gradient(a["gamma"]),
                                            a["x"], SIZE),), dict(stacks=a["stacks"], x=a["x"], gamma=a["gamma"]),
               dtype)


# End to end: 9 blocks of 2 tokens (4 levels, level 3 read by a cut run: block 8 only), or 5 blocks (3 levels, level
# 2 read by block 4 only) for independent init, whose levels compile one state pass each.
E2E = [("linear", "grm", "independent", 9), ("linear", "grm", "checkpoint", 17),
       ("gated_linear", "residual", "checkpoint", 17)]


@pytest.mark.parametrize("memory,aggregation,init,length", E2E)
def test_log_segmentation_equals_definition(x64, memory, aggregation, init, length):
    """Outputs and gradients of every input (float64) of ``impl="auto"`` against the per-token definition; float32
    outputs against the float64 definition."""
    inputs = make_inputs(memory, batch=1, length=length)
    kw = mc_kwargs(memory, aggregation, "log", init, segment_size=2, chunk_size=1)
    cotangent = jax.random.normal(jax.random.key(7), inputs["v"].shape, inputs["v"].dtype)

    def loss(impl):
        def f(a):
            y = memory_caching(**a, **kw, impl=impl)
            return jnp.sum(cotangent * y), y
        return jax.grad(f, has_aux=True)

    grads, y = jax.jit(loss("auto"))(inputs)  # one compile for outputs and gradients
    grads_ref, expected = loss("naive")(inputs)
    assert_close(y, expected, "float64", "y")
    jax.tree_util.tree_map_with_path(lambda p, g, e: assert_close(g, e, "float64", f"d{jax.tree_util.keystr(p)}"),
                                     grads, grads_ref)
    f32 = jax.tree.map(lambda x: x.astype(jnp.float32), inputs)
    assert_close(memory_caching(**f32, **kw, impl="auto"), expected, "float32", "float32")


@pytest.mark.parametrize("memory,aggregation,init", [("linear", "grm", "checkpoint"),
                                                     ("gated_linear", "residual", "independent")])
def test_non_finite_key_never_reaches_earlier_tokens(memory, aggregation, init):
    """A NaN / inf key at token 13 (block 6: levels 1 and 2 present) leaves every earlier output unchanged."""
    inputs = make_inputs(memory, batch=1, length=23, dtype=jnp.float32)
    kw = mc_kwargs(memory, aggregation, "log", init, segment_size=2, chunk_size=1)
    run = jax.jit(lambda k: memory_caching(**dict(inputs, k=k), **kw, impl="auto"))
    clean = run(inputs["k"])
    assert np.isfinite(np.asarray(clean)).all()
    for value in (np.nan, np.inf):
        y = run(inputs["k"].at[:, 13, :, 1].set(value))
        assert_close(y[:, :13], clean[:, :13], "float32", f"k[13] = {value}")
        assert not np.isfinite(np.asarray(y[:, 13:])).all()  # later tokens that read it do see it
