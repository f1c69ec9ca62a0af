"""The one timer of the benchmarks: a warm-up call, then the wall (and process CPU) time of timed calls.

Every benchmark times through :func:`measure` (a zero-argument ``call`` that waits for its own result, so that JAX's
asynchronous dispatch and PyTorch's eager calls are timed the same way) or its shorthands: :func:`jax_call` wraps a
compiled function and its arguments with ``block_until_ready``, :func:`median_ms` gives the median in milliseconds,
:func:`interleaved` times several calls in turn, round by round, so that a change of load on this shared machine
falls on all of them alike. Process CPU time is recorded with every timed call: on a shared machine ``cpu / wall``
below the core count means the run did not have the whole machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def jax_call(fn: Callable, *args: Any) -> Callable[[], Any]:
    """``fn(*args)`` waited for with ``jax.block_until_ready`` (JAX dispatches asynchronously)."""
    import jax

    return lambda: jax.block_until_ready(fn(*args))


def measure(call: Callable[[], Any], repeats: int) -> dict:
    """One warm-up ``call()``, then ``repeats`` timed calls: ``median_s``, ``times_s``, ``cpu_s`` (process CPU seconds,
    all threads, per call) and ``warmup_s``."""
    start = time.perf_counter()
    call()
    warmup = time.perf_counter() - start
    times, cpu = [], []
    for _ in range(repeats):
        c, start = time.process_time(), time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - c)
    return {"median_s": statistics.median(times), "times_s": times, "cpu_s": cpu, "warmup_s": warmup}


def median_ms(fn: Callable, *args: Any, repeats: int) -> float:
    """Median milliseconds of the JAX function ``fn(*args)`` after a warm-up call."""
    return 1e3 * measure(jax_call(fn, *args), repeats)["median_s"]


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """One warm-up of every call, then ``repeats`` rounds calling each in turn; median ms per call."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


__all__ = ["interleaved", "jax_call", "measure", "median_ms"]
