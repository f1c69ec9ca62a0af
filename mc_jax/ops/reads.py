"""Reading stacks of cached memories, weighted by ``gamma``: the read pass of Memory Caching.

A "map" of one memory is what a token's input goes through: ``read`` (the full read-out ``M(x)``), or for deep
memories one linear layer, ``W2`` (d -> f) or ``W1`` (f -> d); soup mixes the layers, the other aggregations mix
read-outs. The maps and their einsums belong to the memory's family (:mod:`mc_jax.ops.memories.families`). Two
layouts:
  * dense: one stack ``[b, m, h, ...]`` shared by every token (constant segmentation), read in query blocks under
    ``jax.checkpoint`` so that at most ``block x m x out`` values per head are alive at a time (forward and backward);
  * per level: log segmentation's memories, one stack ``[b, g, h, ...]`` per level, memory ``j`` read by the tokens
    of the odd half of the ``j``-th pair of that level's groups (:func:`mc_jax.ops.segmentation.odd_runs`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mc_jax.ops.memories import MemorySpec
from mc_jax.ops.segmentation import from_odd_runs, odd_runs
from mc_jax.typing import Array, Bool, Float, PyTree


def _select(available: Array | None, maps: Array) -> Array:
    """Zero the maps of unavailable memories by a select (a NaN in a memory a token cannot see never reaches it)."""
    return maps if available is None else jnp.where(available[..., None], maps, 0.0)


def dense_mix(
    spec: MemorySpec,
    what: str,
    stack: PyTree,
    gamma: Float[Array, "b t h m"],
    x: Float[Array, "b t h i"],
    block: int,
    available: Bool[Array, "b t h m"] | None = None,
) -> Float[Array, "b t h o"]:
    """``sum_m gamma[t, m] map_m(x_t)`` over a shared stack (leaves ``[b, m, h, ...]``); ``t`` a multiple of ``block``.

    ``available`` (optional) selects the memories each token may read; ``gamma`` is zero elsewhere.
    """
    b, t, h = x.shape[:3]
    nb = t // block
    family = spec.family
    stack = jax.tree.map(lambda s: jnp.moveaxis(s, 1, 2), stack)  # b h m ...
    to_blocks = lambda a: jnp.moveaxis(a.reshape(b, nb, block, h, *a.shape[3:]), (1, 3), (0, 2))  # nb b h c ...

    @jax.checkpoint
    def one_block(args):
        xb, gb, ab = args  # [b h c i], [b h c m], [b h c m] | None
        maps = _select(ab, family.apply_map("dense", what, stack, xb))  # b h c m o
        return jnp.einsum("bhcmo,bhcm->bhco", maps, gb) + family.map_residual(what, xb, gb.sum(-1))

    blocks = (to_blocks(x), to_blocks(gamma), None if available is None else to_blocks(available))
    out = jax.lax.map(one_block, blocks)  # nb b h c o
    return jnp.moveaxis(out, (0, 2), (1, 3)).reshape(b, t, h, out.shape[-1])


def blocked_mix(
    spec: MemorySpec,
    what: str,
    stacks: list[PyTree],
    gamma: Float[Array, "b t h m"],
    x: Float[Array, "b t h i"],
    size: int,
) -> Float[Array, "b t h o"]:
    """``sum_p gamma[t, p] map_{p, t}(x_t)`` over log segmentation's levels (blocks of ``size`` tokens).

    ``stacks[p]`` (leaves ``[b, read_groups(nb, p), h, ...]``) holds, per pair ``j`` of level-``p`` groups, the memory
    its odd half reads (:func:`~mc_jax.ops.segmentation.odd_runs`); only those tokens read it, so a token does one
    read per level present for it and nothing is formed per (token, slot). ``gamma`` is zero where a level is absent.
    """
    t = x.shape[1]
    family = spec.family
    out = family.map_residual(what, x, gamma.sum(-1))
    for p, stack in enumerate(stacks):
        span = size << p
        (xw, xt), (gw, gt) = odd_runs(x, span), odd_runs(gamma[..., p], span)
        if xw is None and xt is None:  # a single block: no token reads level 0
            continue
        whole = 0 if xw is None else xw.shape[1]
        read = lambda xs, gs, lo, hi: gs[..., None] * family.apply_map(
            "blocked", what, jax.tree.map(lambda s: s[:, lo:hi], stack), xs)  # b g c h o
        out = out + from_odd_runs(None if xw is None else read(xw, gw, 0, whole),
                                  None if xt is None else read(xt, gt, whole, whole + 1), t)
    return out
