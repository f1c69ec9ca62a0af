"""The one home of the FLOP counts the dispatch compares (multiply-adds of the cached read, per batch and head).

For constant segments of ``C`` tokens over ``T`` (padded) tokens, ``N = T / C`` segments, token ``t`` in segment
``s(t)`` sees the states ``i < s(t)``:

* state read (:func:`causal_read_macs`, what ``impl="auto"`` runs for grm / soup): query block ``j`` reads the
  ``n_j`` states visible to its last token, ``block * n_j * Dk * Dv`` -- about ``T * N / 2 * Dk * Dv``;
* prefix read (:func:`prefix_read_macs`, residual over linear memories): one state read per token, ``T * Dk * Dv``;
* grouped read (:func:`grouped_read_macs`, ssc over matrix memories): every (tile, state) pair of the rows sorted
  by state, at most ``T * top_k / rows + N`` pairs of ``rows * Dk * Dv`` -- about ``(T * top_k + N * rows) * Dk * Dv``;
* quadratic form (:func:`quadratic_macs`, ``mc_jax.ops.reads_quadratic``): every ``[bq, bk]`` tile it visits costs
  ``bq * bk * (Dk + Dv)`` (``q . k`` and the weighted sum of ``v``) -- about ``T^2 / 2 * (Dk + Dv)``.

So the quadratic form has fewer FLOPs than the state read when ``C * (Dk + Dv) < Dk * Dv`` (``C < D / 2`` for
``Dk = Dv = D``), and never fewer than the prefix read at useful lengths. Both counts are of the tiles / blocks the
code actually runs (the diagonal's partly masked tiles included), so the choice follows the work done.
:func:`useful_read_macs` counts only the causally visible work of the quadratic form (the benchmark's "useful" FLOPs).
The state pass that compresses the segments (``T * Dk * Dv``) is the same for every read and is not counted.
"""

from __future__ import annotations

from mc_jax.dispatch import tiling


def causal_read_macs(length: int, segment_size: int, dk: int, dv: int) -> int:
    """Multiply-adds of :func:`mc_jax.ops.reads_causal.causal_read` (the blocks of :func:`tiling.causal_block`);
    with a single block the dense read runs instead, every state for every token."""
    block = tiling.causal_block(length, segment_size, max(dk, dv))
    if block >= length:
        return length * (length // segment_size) * dk * dv
    blocks = range(block, length + 1, block)
    return sum(block * max(1, (stop - 1) // segment_size) for stop in blocks) * dk * dv


def prefix_read_macs(length: int, dk: int, dv: int) -> int:
    """Multiply-adds of the residual prefix read: one state read per token."""
    return length * dk * dv


def grouped_read_macs(length: int, segment_size: int, top_k: int, dk: int, dv: int) -> int:
    """Multiply-adds of :func:`mc_jax.ops.reads_grouped.read_chosen`: its pairs (the bound it allocates)."""
    n_states = length // segment_size
    rows = tiling.grouped_rows(length, n_states, top_k)
    tiles = -(-length * min(top_k, n_states) // rows)
    return (tiles + n_states) * rows * dk * dv


def grouped_pays(length: int, segment_size: int, top_k: int, dk: int, dv: int) -> bool:
    """Fewer multiply-adds than the causal read of every visible state."""
    return grouped_read_macs(length, segment_size, top_k, dk, dv) < causal_read_macs(length, segment_size, dk, dv)


def quadratic_macs(length: int, segment_size: int, dk: int, dv: int) -> int:
    """Multiply-adds of the tiles :func:`mc_jax.ops.reads_quadratic.quadratic_read` visits."""
    tile = tiling.quadratic_tile(length, segment_size)
    key_blocks = lambda qi: -(-(((qi * tile + tile - 1) // segment_size) * segment_size) // tile)
    return sum(key_blocks(qi) for qi in range(length // tile)) * tile * tile * (dk + dv)


def useful_read_macs(length: int, segment_size: int, dk: int, dv: int) -> int:
    """The causally visible pairs of the quadratic form, ``sum_t s(t) * C * (Dk + Dv)``."""
    return sum((t // segment_size) * segment_size for t in range(length)) * (dk + dv)


def quadratic_pays(aggregation: str, length: int, segment_size: int, dk: int, dv: int) -> bool:
    """Fewer multiply-adds than the state read ``impl="auto"`` would run instead (the prefix read for residual)."""
    other = (prefix_read_macs(length, dk, dv) if aggregation == "residual"
             else causal_read_macs(length, segment_size, dk, dv))
    return quadratic_macs(length, segment_size, dk, dv) < other


def useful_op_macs(length: int, segment_size: int, chunk: int, dk: int, dv: int) -> int:
    """Causally visible multiply-adds of one forward of a linear memory with grm (per batch and head): the state
    pass (``T Dk Dv``), the online read (``T Dk Dv`` from the chunk-start states and the intra-chunk pairs ``j <= t``),
    the gate logits (``u . pool(K_i)`` for the visible segments and the online one) and the cached read by the
    cheaper of its two exact forms, visible (token, state) or (token, key) pairs only. The benchmark's "useful"
    FLOPs (``2 *`` this; forward + backward ``3 *`` the forward)."""
    visible_states = sum(t // segment_size for t in range(length))
    cached = min(visible_states * dk * dv, useful_read_macs(length, segment_size, dk, dv))
    intra = sum(t % chunk + 1 for t in range(length)) * (dk + dv)
    return 2 * length * dk * dv + intra + (visible_states + length) * dk + cached
