"""Reading stacks of cached memories, weighted by ``gamma``: the read pass of Memory Caching.

A "map" of one memory is what a token's input goes through: ``read`` (the full read-out ``M(x)``), or for deep
memories one linear layer, ``W2`` (d -> f) or ``W1`` (f -> d); soup mixes the layers, the other aggregations mix
read-outs. Two layouts:
  * dense: one stack ``[b, m, h, ...]`` shared by every token (constant segmentation), read in query blocks under
    ``jax.checkpoint`` so that at most ``block x m x out`` values per head are alive at a time (forward and backward);
  * per block: one stack per block of tokens ``[b, nb, m, h, ...]`` (log segmentation: one slot per level).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mc_jax.ops.memories import MemorySpec
from mc_jax.typing import Array, Float, PyTree

# einsum of one map over a dense stack: x [b h c i], stack [b h m ...] -> [b h c m o]
_DENSE = {
    "linear_read": "bhck,bhmkv->bhcmv",
    "W2": "bhcd,bhmfd->bhcmf",
    "W1": "bhcf,bhmdf->bhcmd",
}
# one map applied to per-block stacks: x [b n h c i], stack [b n h ...] -> [b n h c o]
_BLOCKED = {
    "linear_read": "bnhck,bnhkv->bnhcv",
    "W2": "bnhcd,bnhfd->bnhcf",
    "W1": "bnhcf,bnhdf->bnhcd",
}


def _apply(table: dict, spec: MemorySpec, what: str, stack: PyTree, x: Array) -> Array:
    if spec.family == "linear":
        return jnp.einsum(table["linear_read"], x, stack)
    if what != "read":
        return jnp.einsum(table[what], x, stack[what])
    hidden = jax.nn.gelu(jnp.einsum(table["W2"], x, stack["W2"]))
    # the residual ``x`` of M(x) = x + W1 gelu(W2 x) is added by the caller (it is ``x * sum(gamma)``)
    if table is _DENSE:
        return jnp.einsum("bhcmf,bhmdf->bhcmd", hidden, stack["W1"])
    return jnp.einsum("bnhcf,bnhdf->bnhcd", hidden, stack["W1"])


def _residual(spec: MemorySpec, what: str, x: Array, gamma_sum: Array) -> Array | float:
    return x * gamma_sum[..., None] if spec.family == "deep" and what == "read" else 0.0


def dense_mix(
    spec: MemorySpec,
    what: str,
    stack: PyTree,
    gamma: Float[Array, "b t h m"],
    x: Float[Array, "b t h i"],
    block: int,
) -> Float[Array, "b t h o"]:
    """``sum_m gamma[t, m] map_m(x_t)`` over a shared stack (leaves ``[b, m, h, ...]``); ``t`` a multiple of ``block``."""
    b, t, h = x.shape[:3]
    nb = t // block
    stack = jax.tree.map(lambda s: jnp.moveaxis(s, 1, 2), stack)  # b h m ...
    to_blocks = lambda a: jnp.moveaxis(a.reshape(b, nb, block, h, *a.shape[3:]), (1, 3), (0, 2))  # nb b h c ...

    @jax.checkpoint
    def one_block(args):
        xb, gb = args  # [b h c i], [b h c m]
        # select, not multiply: a memory with zero weight (e.g. one a token cannot see yet) may hold NaN / inf
        reads = jnp.where(gb[..., None] != 0, _apply(_DENSE, spec, what, stack, xb), 0.0)
        out = jnp.einsum("bhcmo,bhcm->bhco", reads, gb)
        return out + _residual(spec, what, xb, gb.sum(-1))

    out = jax.lax.map(one_block, (to_blocks(x), to_blocks(gamma)))  # nb b h c o
    return jnp.moveaxis(out, (0, 2), (1, 3)).reshape(b, t, h, out.shape[-1])


def blocked_mix(
    spec: MemorySpec,
    what: str,
    stacks: PyTree,
    gamma: Float[Array, "b t h m"],
    x: Float[Array, "b t h i"],
) -> Float[Array, "b t h o"]:
    """``sum_m gamma[t, m] map_{m, block(t)}(x_t)`` with a stack per block (leaves ``[b, nb, m, h, ...]``)."""
    b, t, h = x.shape[:3]
    nb = jax.tree.leaves(stacks)[0].shape[1]
    block = t // nb
    xb = jnp.moveaxis(x.reshape(b, nb, block, h, -1), 2, 3)  # b nb h c i
    gb = jnp.moveaxis(gamma.reshape(b, nb, block, h, -1), 2, 3)  # b nb h c m
    out = _residual(spec, what, xb, gb.sum(-1))
    for slot in range(gb.shape[-1]):
        stack = jax.tree.map(lambda s: s[:, :, slot], stacks)
        g = gb[..., slot, None]
        out = out + jnp.where(g != 0, g * _apply(_BLOCKED, spec, what, stack, xb), 0.0)  # select (see dense_mix)
    return jnp.moveaxis(out, 3, 2).reshape(b, t, h, -1)
