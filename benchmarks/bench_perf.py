"""Issue 15 in one command: today's op (the starting commit) against this checkout, training and decoding.

    python -m benchmarks.bench_perf            # ~8-10 min on the 2-core CPU; table on stdout, JSON in results/
    python -m benchmarks.bench_perf --quick    # smoke run (tiny shapes, ~1-2 min)

1. **Forward and forward+backward**, ``memory_caching`` under ``jit`` (loss ``sum(y * ct)``, gradients of q, k, v,
   u), linear + grm / residual, both inits, T in {1024, 4096}, C in {64, 256}, and ``--deep-memories`` (titans,
   dla) + grm at ``--deep-lengths`` (4096), C=64, B=2 H=4 D=64: the code of
   ``--old-rev`` (default ``6815ae5``, extracted with ``git archive`` into a temporary folder and imported in its own
   process; its CPU path is the dense XLA read) against this checkout with ``impl="auto"`` (the visible-state reads).
   Median of ``--repeats`` after one warm-up, each version in a child process of its own.
2. **Growth with T** (this checkout, forward+backward, B=1): residual, ssc (top_k=2) and grm at C=64 over
   ``--growth-lengths``; the exponent is the log-log slope over the last two lengths.
3. **Decoding** ms/token vs context (:mod:`benchmarks.bench_decode`): the one-token step, the chunked streaming
   step it replaced, and a KV-cache attention step.
4. **Useful-FLOP rate** of linear + grm (this checkout, independent init, B=``--batch`` H=4) at C in
   ``--flop-segment-sizes`` and D in ``--flop-dims``: each exact algorithm of the cached read forced in a process of
   its own (the state read, the segment-gated quadratic form) and ``impl="auto"``'s choice
   (:func:`mc_jax.dispatch.cost.quadratic_pays`); the causally visible FLOPs
   (:func:`mc_jax.dispatch.cost.useful_op_macs`) per second as a fraction of a dense f32 matmul timed in the same
   process (:func:`benchmarks.bench_ops.dense_matmul_gflops`), forward and forward+backward (3x the forward's).
5. **Compiled memory of log segmentation** (no timing: compile-time figures, insensitive to the machine's load):
   ``memory_analysis()`` (arguments + outputs + temporaries) of the jitted forward+backward of linear + grm,
   ``segmentation="log"``, both inits, C=64, B=1 H=4 D=64 at ``--memory-lengths``, for ``--old-rev`` and this
   checkout; the ratio per doubling of T, the executed FLOPs (:mod:`benchmarks.hlo_cost`, loops times their trip
   counts) and their growth exponent over the lengths >= 4096, and the largest buffers of the compiled module.
   ``--memory-only`` runs this part alone (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "bench_perf.json"
MEMORY_OUT = ROOT / "benchmarks" / "results" / "bench_perf_memory.json"  # --memory-only's default


# --- worker: runs inside a child process with one version of mc_jax on sys.path -----------------------------------
def _worker(code: Path, impl: str, configs: list[dict], repeats: int) -> None:
    sys.path.insert(0, str(code))
    import jax
    import jax.numpy as jnp

    import mc_jax  # noqa: F401  (the dispatch layer installs itself on import in this checkout)
    from mc_jax.ops import memory_caching

    assert Path(mc_jax.__file__).resolve().is_relative_to(code.resolve()), mc_jax.__file__
    if impl == "memory":
        return _memory_rows(memory_caching, configs)
    force = {"quadratic": True, "state_read": False}.get(impl.partition(":")[2])
    impl = impl.partition(":")[0]
    dense = None
    if force is not None or any("useful_macs" in cfg for cfg in configs):  # part 4 (this checkout only)
        from benchmarks.bench_ops import dense_matmul_gflops
        from mc_jax.dispatch import cost

        if force is not None:  # one algorithm for every shape of this process (jit caches are per process)
            cost.quadratic_pays = lambda *args: force
        dense = dense_matmul_gflops(repeats=3)["gflops"]

    from benchmarks.timing import median_ms

    timed = lambda fn, args: median_ms(fn, *args, repeats=repeats)

    for cfg in configs:
        b, t, h, d = cfg["B"], cfg["T"], cfg["H"], cfg["D"]
        keys = jax.random.split(jax.random.key(0), 5)
        unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
        q, k = (unit(jax.random.normal(key, (b, t, h, d))) for key in keys[:2])
        v, u, ct = (jax.random.normal(key, (b, t, h, d)) for key in keys[2:])
        memory = cfg.get("memory", "linear")
        kw = dict(memory=memory, aggregation=cfg["aggregation"], segment_size=cfg["C"], init=cfg["init"],
                  top_k=2 if cfg["aggregation"] == "ssc" else None, impl=impl)
        if memory in ("dla", "titans"):  # deep: initial MLP (width 2d) and constant gates, as bench_decode
            wkeys = jax.random.split(keys[0], 2)
            kw["params"] = {"W1": 0.1 * jax.random.normal(wkeys[0], (h, d, 2 * d)),
                            "W2": 0.1 * jax.random.normal(wkeys[1], (h, 2 * d, d))}
            kw["gates"] = {"theta": jnp.full((b, t, h), 0.05), "alpha": jnp.full((b, t, h), 0.01)}
            if memory == "titans":
                kw["gates"]["eta"] = jnp.full((b, t, h), 0.9)
        gates = kw.pop("gates", None)  # a jit argument: concrete gates closed over fail the eager range check
        fwd = jax.jit(lambda q, k, v, u, g: memory_caching(q, k, v, u=u, gates=g, **kw))
        loss = lambda q, k, v, u, g: jnp.sum(memory_caching(q, k, v, u=u, gates=g, **kw) * ct)
        fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
        args = (q, k, v, u, gates)
        row = dict(cfg, impl=impl, fwd_ms=timed(fwd, args), fwd_bwd_ms=timed(fwd_bwd, args))
        if dense is not None:
            useful = 2.0 * b * h * cfg["useful_macs"]
            row.update(dense_gflops=dense, fwd_useful_pct=100 * useful / (row["fwd_ms"] * 1e6) / dense,
                       fwd_bwd_useful_pct=100 * 3 * useful / (row["fwd_bwd_ms"] * 1e6) / dense)
        print("ROW " + json.dumps(row), flush=True)


def _memory_rows(memory_caching, configs: list[dict]) -> None:
    """Part 5 in the worker: the compiled forward+backward's memory, executed FLOPs and largest buffers."""
    import jax
    import jax.numpy as jnp

    from benchmarks.hlo_cost import HloCost, memory_bytes

    for cfg in configs:
        b, t, h, d = cfg["B"], cfg["T"], cfg["H"], cfg["D"]
        q, k, v, u, ct = (jax.random.normal(key, (b, t, h, d)) for key in jax.random.split(jax.random.key(0), 5))
        kw = dict(memory="linear", aggregation=cfg["aggregation"], segmentation=cfg["segmentation"],
                  segment_size=cfg["C"], init=cfg["init"], impl=cfg["impl"])
        loss = lambda q, k, v, u: jnp.sum(memory_caching(q, k, v, u=u, **kw) * ct)
        start = time.perf_counter()
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3))).lower(q, k, v, u).compile()
        mem, hlo = memory_bytes(compiled), HloCost(compiled.as_text())
        row = dict(cfg, compile_s=time.perf_counter() - start, peak_mib=mem["peak_bytes"] / 2**20,
                   temp_mib=mem["temp_bytes"] / 2**20, gflops=hlo.cost().flops / 1e9,
                   largest=[(nbytes / 2**20, shape) for nbytes, shape, _ in hlo.largest_buffers(4)])
        if cfg["repeats"]:  # --memory-repeats: also time it (wall and this process's CPU time, median)
            from benchmarks.timing import jax_call, measure

            timed = measure(jax_call(compiled, q, k, v, u), cfg["repeats"])
            row.update(fwd_bwd_ms=1e3 * timed["median_s"], fwd_bwd_cpu_ms=1e3 * statistics.median(timed["cpu_s"]))
        print("ROW " + json.dumps(row), flush=True)


def run_version(code: Path, impl: str, configs: list[dict], repeats: int, timeout: float) -> list[dict]:
    cmd = [sys.executable, "-m", "benchmarks.bench_perf", "--worker", str(code), impl, json.dumps(configs),
           str(repeats)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    if proc.returncode:
        raise RuntimeError(f"worker for {code} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]


def extract(rev: str, into: Path) -> Path:
    """``mc_jax`` of commit ``rev`` in ``into`` (``git archive``; the repository is not touched)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "mc_jax"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


# --- the three parts --------------------------------------------------------------------------------------------
def training_configs(args) -> list[dict]:
    linear = [dict(B=args.batch, H=4, D=64, T=t, C=c, aggregation=a, init=i)
              for t in args.lengths for c in args.segment_sizes for a in ("grm", "residual")
              for i in ("independent", "checkpoint")]
    deep = [dict(B=args.batch, H=4, D=64, T=t, C=64, aggregation="grm", init="independent", memory=m)
            for m in args.deep_memories for t in args.deep_lengths]
    return linear + deep


def growth_configs(args) -> list[dict]:
    return [dict(B=1, H=4, D=64, T=t, C=64, aggregation=a, init="independent")
            for a in ("residual", "ssc", "grm") for t in args.growth_lengths]


def flop_configs(args) -> list[dict]:
    from mc_jax.dispatch import cost
    from mc_jax.ops.memories import get_memory
    from mc_jax.ops.memory_caching import resolve_chunk

    configs = []
    for t in args.flop_lengths:
        for d in args.flop_dims:
            for c in args.flop_segment_sizes:
                chunk = resolve_chunk(get_memory("linear"), c, None)
                configs.append(dict(B=args.batch, H=4, D=d, T=t, C=c, aggregation="grm", init="independent",
                                    useful_macs=cost.useful_op_macs(t, c, chunk, d, d),
                                    auto_picks="quadratic" if cost.quadratic_pays("grm", t, c, d, d) else "state_read"))
    return configs


def print_flops(rows: dict[str, list[dict]]) -> None:
    key = lambda r: (r["T"], r["D"], r["C"])
    by = {name: {key(r): r for r in rs} for name, rs in rows.items()}
    print("\n| T | D | C | auto picks | algorithm | fwd ms | f+b ms | fwd useful % of dense | f+b useful % of dense |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows["auto"]:
        for name in ("state_read", "quadratic", "auto"):
            x = by[name].get(key(r))
            if x:
                print(f"| {r['T']} | {r['D']} | {r['C']} | {r['auto_picks']} | {name} | {x['fwd_ms']:.1f} | "
                      f"{x['fwd_bwd_ms']:.1f} | {x['fwd_useful_pct']:.1f} | {x['fwd_bwd_useful_pct']:.1f} |")


def exponent(rows: list[dict], key: str) -> float | None:
    pts = sorted((r["T"], r[key]) for r in rows)
    if len(pts) < 2:
        return None
    (x0, y0), (x1, y1) = pts[-2], pts[-1]
    return math.log(y1 / y0) / math.log(x1 / x0)


def print_training(old: list[dict], new: list[dict]) -> None:
    key = lambda r: (r.get("memory", "linear"), r["T"], r["C"], r["aggregation"], r["init"])
    before = {key(r): r for r in old}
    print("\n| memory | T | C | agg | init | old fwd ms | new fwd ms | fwd x | old f+b ms | new f+b ms | f+b x "
          "| new bwd/fwd |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in new:
        o = before.get(key(r))
        if o is None:
            continue
        print(f"| {r.get('memory', 'linear')} | {r['T']} | {r['C']} | {r['aggregation']} | {r['init']} "
              f"| {o['fwd_ms']:.1f} | {r['fwd_ms']:.1f} | "
              f"{o['fwd_ms'] / r['fwd_ms']:.2f} | {o['fwd_bwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | "
              f"{o['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f} | {(r['fwd_bwd_ms'] - r['fwd_ms']) / r['fwd_ms']:.2f} |")


def memory_configs(args, impl: str) -> list[dict]:
    return [dict(B=1, H=4, D=64, T=t, C=64, aggregation="grm", segmentation="log", init=i, impl=impl,
                 repeats=args.memory_repeats) for i in ("independent", "checkpoint") for t in args.memory_lengths]


def print_memory(old: list[dict], new: list[dict]) -> dict:
    """Part 5's table; returns the growth of the new memory and FLOPs per init (ratio per doubling, exponent)."""
    key = lambda r: (r["init"], r["T"])
    before = {key(r): r for r in old}
    print("\n| init | T | old f+b MiB | new f+b MiB | old x per doubling | new x per doubling | old GFLOP executed "
          "| new GFLOP executed | old f+b ms | new f+b ms | new largest buffers (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    out, fmt = {}, lambda x: "-" if x is None else f"{x:.2f}"
    get = lambda row, name, f=".1f": "-" if row is None or name not in row else format(row[name], f)
    for init in ("independent", "checkpoint"):
        rs = sorted((r for r in new if r["init"] == init), key=lambda r: r["T"])
        for prev, r in zip([None] + rs[:-1], rs):
            o, po = before.get(key(r)), prev and before.get(key(prev))
            ratio = lambda a, b: None if a is None or b is None else a["peak_mib"] / b["peak_mib"]
            big = ", ".join(f"{size:.0f} {shape}" for size, shape in r["largest"][:2])
            print(f"| {init} | {r['T']} | {get(o, 'peak_mib')} | {r['peak_mib']:.1f} | {fmt(ratio(o, po))} "
                  f"| {fmt(ratio(r, prev))} | {get(o, 'gflops')} | {r['gflops']:.1f} | {get(o, 'fwd_bwd_ms', '.0f')} "
                  f"| {get(r, 'fwd_bwd_ms', '.0f')} | {big} |")
        long = [r for r in rs if r["T"] >= 4096]
        slope = lambda key_: (math.log(long[-1][key_] / long[0][key_]) / math.log(long[-1]["T"] / long[0]["T"])
                              if len(long) >= 2 and key_ in long[0] else None)
        out[init] = dict(memory_exponent=slope("peak_mib"), flops_exponent=slope("gflops"),
                         time_exponent=slope("fwd_bwd_ms"), cpu_time_exponent=slope("fwd_bwd_cpu_ms"),
                         ratios=[b["peak_mib"] / a["peak_mib"] for a, b in zip(rs, rs[1:])])
        print(f"  {init}: T >= 4096 exponents: memory {fmt(out[init]['memory_exponent'])}, executed FLOPs "
              f"{fmt(out[init]['flops_exponent'])}, f+b time {fmt(out[init]['time_exponent'])} "
              f"(CPU time {fmt(out[init]['cpu_time_exponent'])})")
    return out


def print_growth(rows: list[dict]) -> dict:
    out = {}
    print("\n| agg | " + " | ".join(f"T={r['T']} f+b ms" for r in rows if r["aggregation"] == "residual") +
          " | exponent |")
    for agg in ("residual", "ssc", "grm"):
        rs = [r for r in rows if r["aggregation"] == agg]
        out[agg] = exponent(rs, "fwd_bwd_ms")
        print(f"| {agg} | " + " | ".join(f"{r['fwd_bwd_ms']:.1f}" for r in rs) + f" | {out[agg]:.2f} |")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old-rev", default="6815ae5")
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096])
    p.add_argument("--segment-sizes", nargs="+", type=int, default=[64, 256])
    p.add_argument("--deep-memories", nargs="+", default=["titans", "dla"], help="deep memories timed with grm, C=64")
    p.add_argument("--deep-lengths", nargs="+", type=int, default=[4096])
    p.add_argument("--growth-lengths", nargs="+", type=int, default=[2048, 4096, 8192])
    p.add_argument("--decode-contexts", nargs="+", type=int, default=[1024, 4096, 16384])
    p.add_argument("--flop-lengths", nargs="+", type=int, default=[1024, 2048])
    p.add_argument("--flop-segment-sizes", nargs="+", type=int, default=[8, 16])
    p.add_argument("--flop-dims", nargs="+", type=int, default=[32, 64])
    p.add_argument("--skip-flops", action="store_true", help="skip part 4 (the useful-FLOP rate)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per child process")
    p.add_argument("--memory-lengths", nargs="+", type=int, default=[2048, 4096, 8192, 16384])
    p.add_argument("--memory-only", action="store_true", help="run part 5 (log segmentation's memory) alone")
    p.add_argument("--memory-repeats", type=int, default=0, help="part 5: also time each row (median of this many)")
    p.add_argument("--skip-old", action="store_true", help="time this checkout only")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny shapes, one repeat")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.memory_only and args.out == DEFAULT_OUT:
        args.out = MEMORY_OUT
    if args.quick:
        args.lengths, args.segment_sizes, args.growth_lengths = [256], [64], [256, 512]
        args.deep_lengths, args.deep_memories = [256], ["titans"]
        args.decode_contexts, args.repeats, args.batch = [256, 512], 1, 1
        args.flop_lengths, args.memory_lengths = [256], [256, 512]
    return args


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5]))
        return 0
    args = parse_args(argv)
    started = time.perf_counter()
    result = {"command": " ".join(sys.argv), "old_rev": args.old_rev}
    if args.memory_only:
        return _write(args, dict(result, **run_memory(args)), started)
    configs = training_configs(args)
    new = run_version(ROOT, "auto", configs, args.repeats, args.timeout)
    old = []
    if not args.skip_old:
        with tempfile.TemporaryDirectory(prefix="mc_jax_old_") as tmp:
            old = run_version(extract(args.old_rev, Path(tmp)), "xla", configs, args.repeats, args.timeout)
    print_training(old, new)
    growth = run_version(ROOT, "auto", growth_configs(args), args.repeats, args.timeout)
    result.update(training_old=old, training_new=new, growth=growth, growth_exponents=print_growth(growth))

    from benchmarks import bench_decode

    decode_args = bench_decode.parse_args(["--contexts", *map(str, args.decode_contexts), "--steps",
                                           "5" if args.quick else "20", "--out", str(args.out) + ".decode"])
    decode_rows = bench_decode.run(decode_args)
    bench_decode.print_table(decode_rows)
    result.update(decode=decode_rows)
    if not args.skip_flops:
        flops = {name: run_version(ROOT, impl, flop_configs(args), args.repeats, args.timeout)
                 for name, impl in (("state_read", "auto:state_read"), ("quadratic", "auto:quadratic"),
                                    ("auto", "auto"))}
        print_flops(flops)
        result.update(useful_flops=flops)
    result.update(run_memory(args))
    return _write(args, result, started)


def run_memory(args) -> dict:
    """Part 5 for ``--old-rev`` (unless ``--skip-old``) and this checkout."""
    new = run_version(ROOT, "memory", memory_configs(args, "auto"), 1, args.timeout)
    old = []
    if not args.skip_old:
        with tempfile.TemporaryDirectory(prefix="mc_jax_old_") as tmp:
            old = run_version(extract(args.old_rev, Path(tmp)), "memory", memory_configs(args, "xla"), 1,
                              args.timeout)
    return dict(log_memory_old=old, log_memory_new=new, log_memory_growth=print_memory(old, new))


def _write(args, result: dict, started: float) -> int:
    result["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
