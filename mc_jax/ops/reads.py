"""Reading stacks of cached memories, weighted by ``gamma``: the read pass of Memory Caching.

A "map" of one memory is what a token's input goes through: ``read`` (the full read-out ``M(x)``), or for deep
memories one linear layer, ``W2`` (d -> f) or ``W1`` (f -> d); soup mixes the layers, the other aggregations mix
read-outs. The maps and their einsums belong to the memory's family (:mod:`mc_jax.ops.memories.families`). Two
layouts:
  * dense: one stack ``[b, m, h, ...]`` shared by every token (constant segmentation), read in query blocks under
    ``jax.checkpoint`` so that at most ``block x m x out`` values per head are alive at a time (forward and backward);
  * per block: one stack per block of tokens ``[b, nb, m, h, ...]`` (log segmentation: one slot per level).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mc_jax.ops.memories import MemorySpec
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
    stacks: PyTree,
    gamma: Float[Array, "b t h m"],
    x: Float[Array, "b t h i"],
    available: Bool[Array, "b t h m"] | None = None,
) -> Float[Array, "b t h o"]:
    """``sum_m gamma[t, m] map_{m, block(t)}(x_t)`` with a stack per block (leaves ``[b, nb, m, h, ...]``)."""
    b, t, h = x.shape[:3]
    nb = jax.tree.leaves(stacks)[0].shape[1]
    block = t // nb
    family = spec.family
    per_block = lambda a: jnp.moveaxis(a.reshape(b, nb, block, h, -1), 2, 3)  # b nb h c *
    xb, gb = per_block(x), per_block(gamma)
    ab = None if available is None else per_block(available)
    out = family.map_residual(what, xb, gb.sum(-1))
    for slot in range(gb.shape[-1]):
        stack = jax.tree.map(lambda s: s[:, :, slot], stacks)
        maps = _select(None if ab is None else ab[..., slot], family.apply_map("blocked", what, stack, xb))
        out = out + gb[..., slot, None] * maps
    return jnp.moveaxis(out, 3, 2).reshape(b, t, h, -1)
