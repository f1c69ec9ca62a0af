"""The MC op under a mesh: one independent call per (batch, head) shard, inside ``jax.shard_map``.

:func:`mc_jax.ops.memory_caching` is independent across batch rows and heads, so with the batch split over
``(data, fsdp)`` and heads over ``tensor`` every device runs the op on its own rows and heads, with no communication
inside it. ``shard_map`` makes that explicit (GSPMD cannot partition a Pallas custom call, and would otherwise be free
to gather); the learned initial deep memory ``W_0`` enters split over heads (gathered over ``fsdp`` at the boundary,
as FSDP does for every weight), and its gradient is summed over the batch axes by ``shard_map``'s transpose.

Without an active multi-device mesh, or when the batch / heads do not divide by the mesh axes (e.g. a ragged
evaluation batch), the op is called directly (GSPMD partitions the XLA form).
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.sharding import PartitionSpec as P

from mc_jax.ops import memory_caching
from mc_jax.parallel.rules import RULES, active_mesh


def _mesh_axes(mesh, logical: str) -> tuple[str, ...]:
    return tuple(a for a in RULES[logical] if a in mesh.shape)


def _spec_axis(axes: tuple[str, ...]):
    return None if not axes else axes[0] if len(axes) == 1 else axes


def shard_plan(mesh, batch: int, heads: int) -> tuple[Any, Any] | None:
    """``(batch mesh axes, head mesh axes)`` as ``PartitionSpec`` entries, or ``None`` when they do not divide."""
    b_axes, h_axes = _mesh_axes(mesh, "batch"), _mesh_axes(mesh, "heads")
    if batch % math.prod(mesh.shape[a] for a in b_axes) or heads % math.prod(mesh.shape[a] for a in h_axes):
        return None
    return _spec_axis(b_axes), _spec_axis(h_axes)


def sharded_memory_caching(q, k, v, *, u=None, gates=None, params=None, **settings):
    """:func:`~mc_jax.ops.memory_caching` (no cache) split per (batch, head) shard under the active mesh."""
    mesh = active_mesh()
    plan = None if mesh is None else shard_plan(mesh, q.shape[0], q.shape[2])
    if plan is None:
        return memory_caching(q, k, v, u=u, gates=gates, params=params, **settings)
    bax, hax = plan
    act, gate = P(bax, None, hax, None), P(bax, None, hax)
    # Only arrays cross the shard_map boundary; None arguments stay in the closure.
    args = {"q": q, "k": k, "v": v, "u": u, "gates": gates or None, "params": params}
    args = {name: x for name, x in args.items() if x is not None}
    specs = {"q": act, "k": act, "v": act, "u": act, "gates": jax.tree.map(lambda _: gate, gates),
             "params": jax.tree.map(lambda w: P(hax, *(None,) * (w.ndim - 1)), params)}

    def local(a):
        return memory_caching(a["q"], a["k"], a["v"], u=a.get("u"), gates=a.get("gates"), params=a.get("params"),
                              **settings)

    # check_vma=False: the op starts its recurrences from fresh (device-invariant) zero states, which the varying-
    # manual-axes type check would reject as scan carries; every input is split per shard, so nothing is lost.
    return jax.shard_map(local, in_specs=({n: specs[n] for n in args},), out_specs=act, check_vma=False)(args)


__all__ = ["shard_plan", "sharded_memory_caching"]
