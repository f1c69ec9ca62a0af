"""Decoding cost per token vs context length: MC's one-token step, the chunked streaming step it replaced, and a
KV-cache softmax-attention step.

For each context length ``L`` a cache is filled as after ``L`` tokens (random states in the first ``L // C`` slots,
position ``L``; the values do not matter for timing, the decode tests in ``tests/ops/test_decode.py`` check them) and
one jitted call per token is timed with the cache donated (updated in place, as in a generation loop):

* ``mc`` -- ``memory_caching`` with one token (``mc_jax.ops.decode.mc_decode_step``);
* ``mc_chunked`` -- the chunked streaming form ``mc_jax.ops.cache.mc_stream`` on the same token (the decode path of
  the starting commit ``6815ae5``: one inner chunk of padding, a read of every slot of the capacity);
* ``kv_attention`` -- ``softmax(q K^T / sqrt(d)) V`` over a ``[B, H, L + 1, D]`` KV cache (write, then read).

``--capacity-factor F`` sizes the MC caches for ``F * L`` tokens (cost must follow the filled slots, not capacity).

**Byte floor.** A decode step is memory-bound: it must at least read the state it mixes. The same run measures this
machine's streaming bandwidth (:func:`stream_bandwidth`: a jitted sum over a 256 MiB array, and a copy) and prints each
step's time against ``bytes it must read / read bandwidth``: MC reads its filled slots (constant: ``L // C`` states,
ssc: ``top_k``, log: one per set bit of ``L // C``; each ``Dk x Dv`` for a matrix memory, ``2 D F`` for an MLP), their
pooled keys and the online state; KV attention reads ``2 (L + 1) D`` values per (batch, head). At ``L = 16K``, ``C =
64``, ``D = 64`` grm reads 256 states of 64 x 64 = 1 Mi floats per (b, h) against 2 Mi for the KV cache: its floor is
only 2x below attention's, so a 4x win over a KV step at the floor is impossible in float32 for grm (it is for ssc and
log segmentation, whose reads do not grow with ``L``).

    python -m benchmarks.bench_decode                       # B=2 H=4 D=64, C=64, L = 1K..16K
    python -m benchmarks.bench_decode --quick               # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_ops import machine_info  # noqa: E402
from benchmarks.timing import jax_call, measure  # noqa: E402
from mc_jax.ops import init_cache, memory_caching  # noqa: E402
from mc_jax.ops.cache import mc_stream  # noqa: E402
from mc_jax.ops.memories import complete_gates, get_memory  # noqa: E402
from mc_jax.ops.memory_caching import resolve_chunk  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_decode.json"


def filled_cache(memory, aggregation, segmentation, size, b, h, d, context, capacity_tokens, key):
    """A cache as after ``context`` tokens: random states / keys in the filled slots."""
    spec = get_memory(memory)
    params = None
    if spec.family.deep:
        params = {"W1": 0.1 * jax.random.normal(key, (h, d, 2 * d)), "W2": 0.1 * jax.random.normal(key, (h, 2 * d, d))}
    cache = init_cache(b, h, d, d, max_len=capacity_tokens, memory=memory, segmentation=segmentation,
                       segment_size=size, params=params)
    n = min(cache.capacity, context // size if segmentation == "constant" else (context // size).bit_length())
    filled = jnp.arange(cache.capacity) < n
    if segmentation == "log":
        filled = ((context // size) >> jnp.arange(cache.capacity)) & 1 == 1
    rand = lambda s: 0.05 * jax.random.normal(key, s.shape, s.dtype) * filled.reshape(  # b h m ...
        (-1,) + (1,) * (s.ndim - 3))
    cache = dataclasses.replace(cache, position=jnp.int32(context), slots=jax.tree.map(rand, cache.slots),
                                slot_keys=rand(cache.slot_keys), slot_valid=filled)
    return jax.tree.map(jnp.copy, cache)  # distinct buffers (online and initial share one): the cache is donated


def token_inputs(memory, b, h, d, key):
    ks = jax.random.split(key, 4)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    q, k = unit(jax.random.normal(ks[0], (b, 1, h, d))), unit(jax.random.normal(ks[1], (b, 1, h, d)))
    v, u = jax.random.normal(ks[2], (b, 1, h, d)), jax.random.normal(ks[3], (b, 1, h, d))
    spec = get_memory(memory)
    gates = {n: jnp.full((b, 1, h), {"log_decay": -0.05, "beta": 0.5, "theta": 0.05, "alpha": 0.01, "eta": 0.9}[n])
             for n in spec.gate_names}
    return q, k, v, u, gates


def stream_bandwidth(mib: int = 256, repeats: int = 5) -> dict:
    """This machine's streaming rates in GB/s: ``read`` (a jitted sum over ``mib`` MiB) and ``copy`` (read + write)."""
    x = jnp.ones((mib << 18,), jnp.float32)
    total, copy = jax.jit(jnp.sum), jax.jit(lambda a: a * 1.0001)

    def rate(fn, moved):
        return moved / measure(jax_call(fn, x), repeats)["median_s"] / 1e9

    return {"read_gbps": rate(total, x.nbytes), "copy_gbps": rate(copy, 2 * x.nbytes), "array_mib": mib}


def read_slots(segmentation: str, aggregation: str, size: int, context: int, top_k: int) -> int:
    """Cached states one decode step must read after ``context`` tokens."""
    n = context // size
    if segmentation == "log":
        return bin(n).count("1")
    return min(n, top_k) if aggregation == "ssc" else n


def mc_floor_bytes(memory: str, segmentation: str, aggregation: str, size: int, context: int, top_k: int, b: int,
                   h: int, d: int) -> int:
    """Bytes a decode step must read: the filled slots it mixes, their pooled keys, and the online state (float32)."""
    state = 2 * d * 2 * d if get_memory(memory).family.deep else d * d  # MLP W1 + W2 (width 2d) or a d x d matrix
    slots = read_slots(segmentation, aggregation, size, context, top_k)
    return 4 * b * h * ((slots + 1) * state + slots * d)


def kv_floor_bytes(context: int, b: int, h: int, d: int) -> int:
    """Bytes a KV-cache attention step must read: keys and values of ``context + 1`` tokens (float32)."""
    return 4 * b * h * 2 * (context + 1) * d


def time_steps(step, state, args, steps):
    """Median seconds of one step; ``state`` is donated and threaded through (each call consumes the last one's)."""
    carry = [state]

    def one():
        y, carry[0] = step(carry[0], *args)
        jax.block_until_ready(y)

    return measure(one, steps)["median_s"]


def mc_steps(memory, aggregation, segmentation, size, top_k):
    kw = dict(memory=memory, aggregation=aggregation, segmentation=segmentation, segment_size=size,
              top_k=top_k if aggregation == "ssc" else None)
    spec = get_memory(memory)
    chunk = resolve_chunk(spec, size, None)

    def new(cache, q, k, v, u, gates):
        y, cache = memory_caching(q, k, v, u=u, gates=gates, cache=cache, return_cache=True, **kw)
        return y, cache

    def old(cache, q, k, v, u, gates):
        full = complete_gates(spec, gates, q.shape[:3])
        op = {n: x for n, x in kw.items() if n != "memory"}
        return mc_stream(q, k, v, u if aggregation != "residual" else None, full, cache, spec, chunk=chunk,
                         init="independent", pool="mean", **op)

    return jax.jit(new, donate_argnums=0), jax.jit(old, donate_argnums=0)


def _kv_step(kv, q, k, v, position):
    keys, values = kv
    keys = jax.lax.dynamic_update_slice_in_dim(keys, jnp.moveaxis(k, 1, 2), position, axis=2)
    values = jax.lax.dynamic_update_slice_in_dim(values, jnp.moveaxis(v, 1, 2), position, axis=2)
    scores = jnp.einsum("bhd,bhtd->bht", q[:, 0], keys) / math.sqrt(q.shape[-1])
    scores = jnp.where(jnp.arange(keys.shape[2]) <= position, scores, -jnp.inf)
    y = jnp.einsum("bht,bhtd->bhd", jax.nn.softmax(scores, -1), values)
    return y, (keys, values)


kv_step = jax.jit(_kv_step, donate_argnums=0)


def run(args) -> list[dict]:
    """The timed rows; each has ``floor_bytes`` and, from :func:`stream_bandwidth` measured first in the same run,
    ``floor_ms`` (``floor_bytes`` at the read bandwidth) and ``of_floor`` (``ms_per_token / floor_ms``)."""
    bandwidth = stream_bandwidth()
    print(json.dumps(dict(kind="bandwidth", **bandwidth)), flush=True)
    rows = [dict(kind="bandwidth", **bandwidth)] + _timed_rows(args)
    for r in rows[1:]:
        r["floor_ms"] = 1e3 * r["floor_bytes"] / (bandwidth["read_gbps"] * 1e9)
        r["of_floor"] = r["ms_per_token"] / r["floor_ms"]
    return rows


def _timed_rows(args) -> list[dict]:
    key = jax.random.key(0)
    b, h, d = args.batch, args.heads, args.dim
    rows = []
    for memory, aggregation, segmentation in args.configs:
        new, old = mc_steps(memory, aggregation, segmentation, args.segment_size, args.top_k)
        for context in args.contexts:
            q, k, v, u, gates = token_inputs(memory, b, h, d, key)
            row = dict(kind="mc", memory=memory, aggregation=aggregation, segmentation=segmentation,
                       segment_size=args.segment_size, context=context, B=b, H=h, D=d,
                       capacity_tokens=args.capacity_factor * context + 1)
            make = lambda: filled_cache(memory, aggregation, segmentation, args.segment_size, b, h, d, context,
                                        row["capacity_tokens"], key)
            row["ms_per_token"] = 1e3 * time_steps(new, make(), (q, k, v, u, gates), args.steps)
            row["floor_bytes"] = mc_floor_bytes(memory, segmentation, aggregation, args.segment_size, context,
                                                args.top_k, b, h, d)
            if not args.skip_chunked:
                row["chunked_ms_per_token"] = 1e3 * time_steps(old, make(), (q, k, v, u, gates),
                                                               min(args.steps, args.chunked_steps))
            rows.append(row)
            print(json.dumps(row), flush=True)
    for context in args.contexts:
        q, k, v, _, _ = token_inputs("linear", b, h, d, key)
        kv = (jnp.zeros((b, h, context + 1, d)), jnp.zeros((b, h, context + 1, d)))
        ms = 1e3 * time_steps(kv_step, kv, (q, k, v, jnp.int32(context)), args.steps)
        row = dict(kind="kv_attention", context=context, B=b, H=h, D=d, ms_per_token=ms,
                   floor_bytes=kv_floor_bytes(context, b, h, d))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def growth_exponent(rows, key):
    """Slope of log(ms) over log(context) between the two largest contexts."""
    pts = sorted((r["context"], r[key]) for r in rows)
    if len(pts) < 2:
        return None
    (x0, y0), (x1, y1) = pts[-2], pts[-1]
    return math.log(y1 / y0) / math.log(x1 / x0)


def print_table(rows):
    nan = dict(ms_per_token=float("nan"), floor_ms=float("nan"), of_floor=float("nan"))
    kv = {r["context"]: r for r in rows if r["kind"] == "kv_attention"}
    for r in rows:
        if r["kind"] == "bandwidth":
            print(f"\nstreaming bandwidth of this run: read {r['read_gbps']:.1f} GB/s, copy {r['copy_gbps']:.1f} GB/s "
                  f"({r['array_mib']} MiB array); floor = bytes a step must read / read bandwidth")
    print("\n| memory | agg | seg | context | MC ms/token | MC floor ms | MC / floor | chunked (old) ms/token "
          "| KV ms/token | KV floor ms | KV / floor | KV / MC | KV floor / MC floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["kind"] != "mc":
            continue
        old, a = r.get("chunked_ms_per_token"), kv.get(r["context"], nan)
        print(f"| {r['memory']} | {r['aggregation']} | {r['segmentation']} | {r['context']} | {r['ms_per_token']:.3f} "
              f"| {r['floor_ms']:.3f} | {r['of_floor']:.1f} | {'-' if old is None else f'{old:.3f}'} "
              f"| {a['ms_per_token']:.3f} | {a['floor_ms']:.3f} | {a['of_floor']:.1f} "
              f"| {a['ms_per_token'] / r['ms_per_token']:.2f} | {a['floor_ms'] / r['floor_ms']:.2f} |")
    groups = {}
    for r in rows[1:] if rows and rows[0]["kind"] == "bandwidth" else rows:
        groups.setdefault((r["kind"], r.get("memory"), r.get("aggregation"), r.get("segmentation")), []).append(r)
    print("\ngrowth exponents (ms/token vs context, last two contexts):")
    for name, rs in groups.items():
        print(f"  {'/'.join(str(x) for x in name if x)}: {growth_exponent(rs, 'ms_per_token')}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", nargs="+", type=int, default=[1024, 4096, 16384])
    p.add_argument("--configs", nargs="+", type=lambda s: tuple(s.split(":")),
                   default=[("linear", "grm", "constant"), ("linear", "residual", "constant"),
                            ("linear", "ssc", "constant"), ("linear", "grm", "log"), ("titans", "grm", "constant")],
                   help="memory:aggregation:segmentation")
    p.add_argument("--segment-size", type=int, default=64)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--steps", type=int, default=30, help="timed steps (median) after one warm-up")
    p.add_argument("--capacity-factor", type=int, default=1)
    p.add_argument("--skip-chunked", action="store_true", help="do not time the old chunked streaming step")
    p.add_argument("--chunked-steps", type=int, default=5, help="timed steps of the (slow) chunked streaming step")
    p.add_argument("--quick", action="store_true", help="smoke run: contexts 256 1024, 3 steps, linear+grm")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.contexts, args.steps, args.configs = [256, 1024], 3, [("linear", "grm", "constant")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = run(args)
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
