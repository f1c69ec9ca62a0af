"""Segmentations: which token ranges are cached for a token (``constant`` and ``log``/Fenwick), DESIGN.md 3.1.

``constant``: segment ``i`` is ``[i C, (i + 1) C)``; token ``t`` reads the segments before its own.
``log``: with block size ``C``, token ``t`` lies in block ``c = t // C``. Writing ``c = 2^p1 + 2^p2 + ...``
(``p1 > p2 > ...``), its cached memories are the aligned groups ``[0, 2^p1)``, ``[2^p1, 2^p1 + 2^p2)``, ... of blocks
(oldest, largest first). The group at level ``p`` (``2^p`` blocks) is block-aligned: it covers blocks
``[(c >> p << p) - 2^p, c >> p << p)``, i.e. it is group number ``(c >> p) - 1`` of level ``p``. Cache slot ``p``
holds it; it is present exactly when bit ``p`` of ``c`` is set.
"""

from __future__ import annotations

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


def log_slot_group(block: int, level: int) -> tuple[bool, int]:
    """For a token in ``block``: whether slot ``level`` is present and which group of that level it holds."""
    return bool(block >> level & 1), (block >> level) - 1
