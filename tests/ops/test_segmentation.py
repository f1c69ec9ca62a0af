"""Segmentations: the cached token ranges of ``constant`` and ``log`` (Fenwick) segmentation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mc_jax.ops import cached_ranges


def test_paper_example_37_is_32_plus_4_plus_1():
    # the 37th token (t = 36) with blocks of one token: groups of 32 and 4 tokens, then the online token
    ranges, online_start = cached_ranges(36, "log", 1)
    assert ranges == [(0, 32), (32, 36)]
    assert online_start == 36


def test_small_log_cases():
    assert cached_ranges(0, "log", 4) == ([], 0)
    assert cached_ranges(5, "log", 4) == ([(0, 4)], 4)  # block 1 = 0b1
    assert cached_ranges(8, "log", 4) == ([(0, 8)], 8)  # block 2 = 0b10
    assert cached_ranges(13, "log", 4) == ([(0, 8), (8, 12)], 12)


def test_constant_segments():
    assert cached_ranges(9, "constant", 4) == ([(0, 4), (4, 8)], 8)
    assert cached_ranges(3, "constant", 4) == ([], 0)


@settings(max_examples=200, deadline=None)
@given(t=st.integers(0, 5000), size=st.integers(1, 9))
def test_log_groups_partition_the_past_in_aligned_shrinking_powers_of_two(t, size):
    ranges, online_start = cached_ranges(t, "log", size)
    assert online_start == (t // size) * size
    cursor, previous = 0, None
    for start, end in ranges:
        assert start == cursor
        blocks = (end - start) // size
        assert (end - start) % size == 0 and blocks & (blocks - 1) == 0  # a power of two
        assert (start // size) % blocks == 0  # aligned to its own size
        assert previous is None or blocks < previous  # strictly shrinking: oldest and largest first
        cursor, previous = end, blocks
    assert cursor == online_start
    assert len(ranges) == bin(t // size).count("1")  # at most floor(log2 c) + 1 memories
