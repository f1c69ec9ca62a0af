"""The benchmarks' one timer (``benchmarks/timing.py``): what it calls and what it reports."""

from __future__ import annotations

import jax.numpy as jnp

from benchmarks import timing


def test_measure_warms_up_once_then_times_each_call():
    calls = []
    result = timing.measure(lambda: calls.append(len(calls)), repeats=4)
    assert calls == [0, 1, 2, 3, 4]  # one warm-up, four timed calls
    assert len(result["times_s"]) == len(result["cpu_s"]) == 4
    assert min(result["times_s"]) <= result["median_s"] <= max(result["times_s"])
    assert result["warmup_s"] >= 0


def test_jax_call_waits_for_the_result_and_median_ms_is_milliseconds():
    out = timing.jax_call(lambda x: x + 1, jnp.ones(3))()
    assert jnp.array_equal(out, jnp.full(3, 2.0))
    ms = timing.median_ms(lambda x: x * 2, jnp.ones(8), repeats=3)
    assert 0 < ms < 60_000


def test_interleaved_times_every_call_in_turn():
    order = []
    result = timing.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=2)
    assert order == ["a", "b", "a", "b", "a", "b"]  # warm-up round, then two timed rounds
    assert set(result) == {"a", "b"} and all(v >= 0 for v in result.values())
