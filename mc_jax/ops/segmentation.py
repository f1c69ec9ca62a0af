"""Segmentations: which token ranges are cached for a token (``constant`` and ``log``/Fenwick), DESIGN.md 3.1.

``constant``: segment ``i`` is ``[i C, (i + 1) C)``; token ``t`` reads the segments before its own.
``log``: with block size ``C``, token ``t`` lies in block ``c = t // C``. Writing ``c = 2^p1 + 2^p2 + ...``
(``p1 > p2 > ...``), its cached memories are the aligned groups ``[0, 2^p1)``, ``[2^p1, 2^p1 + 2^p2)``, ... of blocks
(oldest, largest first). The group at level ``p`` (``2^p`` blocks) is block-aligned: it covers blocks
``[(c >> p << p) - 2^p, c >> p << p)``, i.e. it is group number ``(c >> p) - 1`` of level ``p``. Cache slot ``p``
holds it; it is present exactly when bit ``p`` of ``c`` is set.

Level layout of the whole-sequence read (:func:`read_groups`, :func:`odd_runs`): bit ``p`` of ``c`` is set exactly
on the second ("odd") half of every pair of level-``p`` groups, blocks ``[(2j + 1) 2^p, (2j + 2) 2^p)``, and all of
those blocks read group ``2j`` of level ``p``. So level ``p`` is read as one memory per pair ``j`` by a contiguous
run of ``span = C 2^p`` tokens: every token reads only its present levels, and no per-token (or per-block) copy of
the slots is formed -- ``O(T log T)`` read-outs and ``O(N)`` memories over all levels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mc_jax.ops.utils import ceil_div, pad_axis
from mc_jax.typing import Array, Bool, Float, Int

SEGMENTATIONS = ("constant", "log")


def cached_ranges(t: int, segmentation: str, segment_size: int) -> tuple[list[tuple[int, int]], int]:
    """Token ranges ``[start, end)`` cached for token ``t`` (oldest first) and the start of its online segment."""
    c = t // segment_size
    if segmentation == "constant":
        return [(i * segment_size, (i + 1) * segment_size) for i in range(c)], c * segment_size
    ranges, start = [], 0
    for p in reversed(range(c.bit_length())):
        if c >> p & 1:
            ranges.append((start * segment_size, (start + (1 << p)) * segment_size))
            start += 1 << p
    return ranges, c * segment_size


def num_levels(num_blocks: int) -> int:
    """Cache slots needed by log segmentation: bits of the largest block index ``num_blocks - 1``."""
    return max(1, math.floor(math.log2(num_blocks - 1)) + 1) if num_blocks > 1 else 1


def cache_slots(max_len: int, segmentation: str, segment_size: int) -> int:
    """Slots a streaming cache needs to hold everything up to ``max_len`` tokens."""
    n = ceil_div(max_len, segment_size)
    return max(1, n) if segmentation == "constant" else max(1, n.bit_length())


def cache_token_capacity(capacity: int, segmentation: str, segment_size: int) -> int:
    """Tokens a cache with ``capacity`` slots can take in total (the inverse of :func:`cache_slots`)."""
    return capacity * segment_size if segmentation == "constant" else ((1 << capacity) - 1) * segment_size


class FenwickSlots(NamedTuple):
    """For every block ``c`` and level ``p``: the level-``p`` group a token of block ``c`` reads (``[nb, m]`` each).

    ``present``: bit ``p`` of ``c`` is set; ``group``: its index ``(c >> p) - 1`` at level ``p`` (0 when absent);
    ``start`` / ``end``: its blocks ``[start, end)``, ``end = c >> p << p`` (both 0 when absent at ``c < 2^p``).
    """

    present: Bool[Array, "nb m"]
    group: Int[Array, "nb m"]
    start: Int[Array, "nb m"]
    end: Int[Array, "nb m"]


def fenwick_slots(n_blocks: int, levels: int) -> FenwickSlots:
    """The cached groups of every block (parallel form): slot ``p`` of block ``c`` is present iff bit ``p`` is set."""
    blocks = jnp.arange(n_blocks)
    present = jnp.stack([(blocks >> p) & 1 for p in range(levels)], -1).astype(bool)
    group = jnp.stack([jnp.maximum((blocks >> p) - 1, 0) for p in range(levels)], -1)
    end = (blocks[:, None] >> jnp.arange(levels)) << jnp.arange(levels)
    start = jnp.maximum(end - (1 << jnp.arange(levels)), 0)
    return FenwickSlots(present, group, start, end)


def fenwick_merge_level(block: Int[Array, ""]) -> Int[Array, ""]:
    """The level whose group completes with ``block`` (streaming form): its trailing ones, ``m``.

    Slot ``m`` then holds the group of ``2^m`` blocks ending at ``block``; slots ``< m`` empty (their groups merged
    into it) and levels ``<= m`` restart.
    """
    return jax.lax.population_count(block ^ (block + 1)) - 1


def read_groups(n_blocks: int, level: int) -> int:
    """Level-``level`` groups some block of ``n_blocks`` reads: the even groups ``2j`` whose odd half starts before
    the end, ``(2j + 1) 2^p < nb`` (so each of them is complete)."""
    return (((n_blocks - 1) >> level) + 1) // 2


def odd_runs(x: Float[Array, "b t *rest"], span: int) -> tuple[Array | None, Array | None]:
    """The tokens that read a level's groups (``span = C 2^p``): the odd halves ``[(2j + 1) span, (2j + 2) span)``
    of ``x``'s ``t`` tokens, as ``(whole [b, f, span, ...], tail [b, 1, r, ...])``: the ``f = t // (2 span)`` whole
    ones and the last one cut at ``t`` (``r = t - (2 f + 1) span`` tokens), each ``None`` when empty. Pair ``j``
    reads group ``2j``: ``f`` plus one for a tail is :func:`read_groups`."""
    b, t = x.shape[:2]
    f, r = t // (2 * span), t - (2 * (t // (2 * span)) + 1) * span
    whole = x[:, :2 * span * f].reshape(b, f, 2, span, *x.shape[2:])[:, :, 1] if f else None
    return whole, (x[:, t - r:][:, None] if r > 0 else None)


def from_odd_runs(whole: Array | None, tail: Array | None, length: int) -> Float[Array, "b length *rest"]:
    """The inverse layout of :func:`odd_runs`: the runs on the odd halves, zeros on the even ones (at least one of
    the two runs given)."""
    parts = []
    if whole is not None:
        b, f, span = whole.shape[:3]
        parts.append(jnp.stack([jnp.zeros_like(whole), whole], axis=2).reshape(b, 2 * f * span, *whole.shape[3:]))
    if tail is not None:
        gap = length - tail.shape[2] - sum(part.shape[1] for part in parts)  # the even half before the tail
        parts += [jnp.zeros((tail.shape[0], gap, *tail.shape[3:]), tail.dtype), tail[:, 0]]
    y = jnp.concatenate(parts, axis=1)
    return pad_axis(y, length, 1)


def even_groups(x: Float[Array, "b t *rest"], span: int, groups: int) -> Float[Array, "b u *rest"]:
    """The tokens of the even groups ``[2j span, (2j + 1) span)``, ``j < groups``, in order (``u = groups span``):
    the groups the odd halves read (``groups`` = :func:`read_groups`: each lies inside ``x``)."""
    b, rest = x.shape[0], x.shape[2:]
    pairs = min(groups, x.shape[1] // (2 * span))  # whole pairs inside x; at most one more group after them
    parts = [x[:, :2 * span * pairs].reshape(b, pairs, 2, span, *rest)[:, :, 0].reshape(b, pairs * span, *rest)]
    if groups > pairs:
        parts.append(x[:, 2 * span * pairs:(2 * pairs + 1) * span])
    return jnp.concatenate(parts, axis=1)
