"""Random inputs for the op tests: unit-norm q/k (as the layer gives them), gates in their natural ranges."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mc_jax.ops.memories import get_memory

MEMORY_NAMES = ("linear", "gated_linear", "delta", "dla", "titans")
AGGREGATION_NAMES = ("residual", "grm", "soup", "ssc")


def make_inputs(memory: str, *, batch=2, length=37, heads=2, dk=8, dv=6, dtype=jnp.float64, seed=0,
                expansion=2, initial_state=True):
    """``dict(q, k, v, u, gates, params)`` for :func:`mc_jax.ops.memory_caching`."""
    spec = get_memory(memory)
    if spec.family.deep:
        dv = dk
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    normal = lambda shape: jax.random.normal(next(keys), shape, jnp.result_type(float))
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    bth = (batch, length, heads)
    q, k = unit(normal(bth + (dk,))), unit(normal(bth + (dk,)))
    v, u = normal(bth + (dv,)), normal(bth + (dk,))
    all_gates = {
        "log_decay": -jax.nn.softplus(normal(bth)) * 0.5,
        "beta": jax.nn.sigmoid(normal(bth)),
        "theta": 0.1 * jax.nn.sigmoid(normal(bth)),
        "alpha": 0.1 * jax.nn.sigmoid(normal(bth)),
        "eta": jax.nn.sigmoid(normal(bth) + 1.0),
    }
    gates = {name: all_gates[name] for name in spec.gate_names}
    if spec.family.deep:
        f = expansion * dk
        params = {"W1": 0.3 * normal((heads, dk, f)) / f**0.5, "W2": normal((heads, f, dk)) / dk**0.5}
    else:
        params = 0.3 * normal((batch, heads, dk, dv)) if initial_state else None
    cast = lambda x: jax.tree.map(lambda a: a.astype(dtype), x)
    return dict(q=cast(q), k=cast(k), v=cast(v), u=cast(u), gates=cast(gates), params=cast(params))


def mc_kwargs(memory, aggregation, segmentation="constant", init="independent", segment_size=4, chunk_size=2,
              top_k=2):
    return dict(memory=memory, aggregation=aggregation, segmentation=segmentation, init=init,
                segment_size=segment_size, chunk_size=chunk_size, top_k=top_k if aggregation == "ssc" else None)


def slice_time(inputs: dict, start: int, stop: int) -> dict:
    """The per-token inputs restricted to tokens ``[start, stop)`` (params dropped)."""
    cut = lambda x: None if x is None else x[:, start:stop]
    return dict(q=cut(inputs["q"]), k=cut(inputs["k"]), v=cut(inputs["v"]), u=cut(inputs["u"]),
                gates={n: cut(g) for n, g in inputs["gates"].items()})
