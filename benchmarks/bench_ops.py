"""Benchmark of ``mc_jax.ops.memory_caching``: time, throughput, achieved GFLOP/s and compiled memory per configuration.

For every memory x aggregation x length x segment size it

  * checks the shape cheaply (parallel ``impl="xla"`` vs the streaming form ``return_cache=True`` on the first few
    segments; linear + residual also against plain causal linear attention) -> ``checked``;
  * compiles the forward and the forward+backward (gradient of ``sum(y * cotangent)`` w.r.t. q, k, v, u, gates and
    params) with ``jax.jit(...).lower(...).compile()``, reads ``memory_analysis()`` (argument + output + temp bytes)
    and skips the phase when that exceeds ``--max-gb``;
  * times the compiled function: one warm-up, then the median of ``--repeats`` runs (``block_until_ready``);
  * counts FLOPs from the compiled module: XLA's ``cost_analysis()['flops']`` (reported as ``flops_xla_raw``) counts
    a ``while`` loop body once, so the number used for GFLOP/s is the loop-corrected count of
    :mod:`benchmarks.hlo_cost` (body x known trip count; equal to XLA's number when the module has no loops);
  * compares the achieved GFLOP/s with a dense f32 matmul measured in the same run.

Usage::

    python -m benchmarks.bench_ops --quick                      # smoke run (B=1, T=1024)
    python -m benchmarks.bench_ops --memories linear --aggregations grm residual --lengths 1024 4096 --repeats 3
    python -m benchmarks.bench_ops --out benchmarks/results/mine.json --append   # add rows to an existing file

Results: a table on stdout and JSON at ``--out`` (default ``benchmarks/results/bench_ops.json``), written after every
configuration so that a long run can be polled.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

# jaxlib's CPU triangular solve (``lapack_strsm_ffi``, used by the ``delta`` memory) calls the OpenBLAS bundled with
# scipy from XLA's worker threads. With OpenBLAS's own thread pool on top, a batch of 128 64x64 solves took ~1.3 s
# instead of ~0.007 s on the 2-core benchmark machine, and delta at T=4096 deadlocked (all threads idle in futex
# waits). One OpenBLAS thread avoids both; ``--openblas-default`` keeps the environment as it is.
if "--openblas-default" not in sys.argv:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``mc_jax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.hlo_cost import HloCost, memory_bytes, xla_flops  # noqa: E402
from benchmarks.timing import jax_call, measure  # noqa: E402
from mc_jax.ops import memory_caching  # noqa: E402
from mc_jax.ops.memories import get_memory  # noqa: E402
from mc_jax.ops.segmentation import num_levels  # noqa: E402
from mc_jax.ops.utils import ceil_div  # noqa: E402

MEMORIES = ("linear", "gated_linear", "delta", "dla", "titans")
AGGREGATIONS = ("residual", "grm", "soup", "ssc")
TOP_K = 2
EXPANSION = 2  # deep memories: hidden width E * D
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_ops.json"


# --------------------------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------------------------
def machine_info() -> dict:
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=Path(__file__).resolve().parent).stdout.strip()
        if rev and dirty:
            rev += "+dirty"
    except Exception:  # noqa: BLE001 - no git, not a checkout
        rev = None
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model,
        "os_cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "jaxlib_version": getattr(getattr(jax, "lib", None), "__version__", None) or _jaxlib_version(),
        "devices": [str(d) for d in jax.devices()],
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
        "backend": jax.default_backend(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_revision": rev,
        "command": " ".join([Path(sys.executable).name, "-m", f"benchmarks.{Path(sys.argv[0]).stem}"] + sys.argv[1:]),
    }


def _jaxlib_version():
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # noqa: BLE001
        return None


def dense_matmul_gflops(n: int = 2048, repeats: int = 10) -> dict:
    """Achieved GFLOP/s of a jit-compiled f32 ``n x n @ n x n`` (median over repeats)."""
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul).lower(a, b).compile()
    timed = measure(jax_call(f, a, b), repeats)
    times, cpu, med = timed["times_s"], timed["cpu_s"], timed["median_s"]
    return {"n": n, "repeats": repeats, "median_s": med, "gflops": 2.0 * n**3 / med / 1e9,
            "best_gflops": 2.0 * n**3 / min(times) / 1e9, "cpu_per_wall": sum(cpu) / sum(times)}


# --------------------------------------------------------------------------------------------------------------
# inputs and functions
# --------------------------------------------------------------------------------------------------------------
def make_inputs(memory: str, batch: int, length: int, heads: int, dk: int, dv: int, seed: int = 0) -> dict:
    """Valid float32 inputs (as ``tests/helpers/op_inputs.py``): unit-norm q/k, gates in range, deep params."""
    spec = get_memory(memory)
    if spec.family.deep:
        dv = dk
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    normal = lambda shape: jax.random.normal(next(keys), shape, jnp.float32)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    bth = (batch, length, heads)
    q, k = unit(normal(bth + (dk,))), unit(normal(bth + (dk,)))
    v, u = normal(bth + (dv,)), normal(bth + (dk,))
    all_gates = {
        "log_decay": -jax.nn.softplus(normal(bth)) * 0.5,
        "beta": jax.nn.sigmoid(normal(bth)),
        "theta": 0.1 * jax.nn.sigmoid(normal(bth)),  # ~0.05
        "alpha": 0.1 * jax.nn.sigmoid(normal(bth)),
        "eta": jax.nn.sigmoid(normal(bth) + 1.0),
    }
    gates = {name: all_gates[name] for name in spec.gate_names}
    if spec.family.deep:
        f = EXPANSION * dk
        params = {"W1": 0.3 * normal((heads, dk, f)) / f**0.5, "W2": normal((heads, f, dk)) / dk**0.5}
    else:
        params = None
    ct = normal(bth + (dv,))  # cotangent of the backward
    return dict(q=q, k=k, v=v, u=u, gates=gates, params=params, ct=ct)


def op_kwargs(cfg: dict) -> dict:
    return dict(memory=cfg["memory"], aggregation=cfg["aggregation"], segmentation=cfg["segmentation"],
                segment_size=cfg["segment_size"], init="independent",
                top_k=TOP_K if cfg["aggregation"] == "ssc" else None)


def forward_fn(cfg: dict):
    kw = op_kwargs(cfg)

    def f(q, k, v, u, gates, params):
        return memory_caching(q, k, v, u=u, gates=gates, params=params, **kw)

    return f


def fwd_bwd_fn(cfg: dict):
    f = forward_fn(cfg)

    def loss(q, k, v, u, gates, params, ct):
        return jnp.sum(f(q, k, v, u, gates, params).astype(jnp.float32) * ct)

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5))


def causal_linear_attention(q, k, v):
    """``y_t = sum_{s <= t} (q_t . k_s) v_s`` (quadratic reference; for short prefixes only)."""
    t = q.shape[1]
    scores = jnp.einsum("bthd,bshd->bhts", q, k, precision="highest")
    scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, 0.0)
    return jnp.einsum("bhts,bshv->bthv", scores, v, precision="highest")


def check_shape(cfg: dict, inputs: dict, segments: int = 4) -> dict:
    """Parallel form vs streaming form on the first ``segments`` segments (and vs causal linear attention)."""
    length = min(cfg["T"], segments * cfg["segment_size"])
    cut = lambda x: x[:, :length]
    q, k, v, u = (cut(inputs[n]) for n in ("q", "k", "v", "u"))
    gates = {n: cut(g) for n, g in inputs["gates"].items()}
    kw = op_kwargs(cfg)
    y_par = memory_caching(q, k, v, u=u, gates=gates, params=inputs["params"], impl="xla", **kw)
    y_str, _ = memory_caching(q, k, v, u=u, gates=gates, params=inputs["params"], impl="xla", return_cache=True, **kw)
    scale = float(jnp.max(jnp.abs(y_str))) or 1.0
    errors = {"stream": float(jnp.max(jnp.abs(y_par - y_str))) / scale}
    if cfg["memory"] == "linear" and cfg["aggregation"] == "residual":
        ref = causal_linear_attention(q, k, v)
        errors["linear_attention"] = float(jnp.max(jnp.abs(y_par - ref))) / max(float(jnp.max(jnp.abs(ref))), 1e-30)
    finite = bool(jnp.all(jnp.isfinite(y_par)))
    tol = 2e-4 if not get_memory(cfg["memory"]).family.deep else 1e-3
    return {"checked": finite and all(e <= tol for e in errors.values()), "check_tokens": length,
            "check_rel_error": errors, "check_tol": tol}


def cached_memories(cfg: dict) -> int:
    """Cached memories the parallel form materialises: one per segment (constant) or per group at every level (log)."""
    n_blocks = ceil_div(cfg["T"], cfg["segment_size"])
    if cfg["segmentation"] == "constant":
        return n_blocks
    levels = num_levels(n_blocks)
    padded = ceil_div(n_blocks, 1 << (levels - 1)) << (levels - 1)
    return sum(padded >> p for p in range(levels))


# --------------------------------------------------------------------------------------------------------------
# one phase (forward or forward+backward) of one configuration
# --------------------------------------------------------------------------------------------------------------
def run_phase(fn, args, cfg: dict, repeats: int, max_bytes: float, dense: float) -> dict:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    res = {"compile_s": time.perf_counter() - start}
    mem = memory_bytes(compiled)
    res["memory"] = mem
    if mem is not None:
        res["peak_bytes_per_cached_memory"] = mem["peak_bytes"] / cfg["cached_memories"]
        res["temp_bytes_per_cached_memory"] = mem["temp_bytes"] / cfg["cached_memories"]
    hlo = None
    try:
        hlo = HloCost(compiled.as_text())
        cost = hlo.cost()
        res.update(flops=cost.flops, dot_flops=cost.dot_flops, flops_no_trips=cost.flops_no_trips,
                   transcendentals=cost.transcendentals, unknown_trip_loops=cost.unknown_trip_loops)
        nbytes, shape, _ = hlo.largest_buffer()
        elems = math.prod(int(d) for d in shape[shape.index("[") + 1:-1].split(",") if d) if shape else 0
        res["largest_buffer"] = {"bytes": nbytes, "shape": shape,
                                 "elements_per_head_TxT": elems / (cfg["H"] * cfg["T"] ** 2)}
        res["square_TxT_arrays"] = hlo.square_arrays(cfg["T"], cfg["H"])
    except Exception as e:  # noqa: BLE001 - the HLO walk is best effort
        res["hlo_error"] = repr(e)
    res["flops_xla_raw"] = xla_flops(compiled)
    if mem is not None and mem["peak_bytes"] > max_bytes:
        res["skipped"] = f"estimated memory {mem['peak_bytes'] / 2**30:.2f} GiB > --max-gb {max_bytes / 2**30:.2f}"
        return res
    res["dense_gflops_local"] = dense_matmul_gflops(repeats=3)["gflops"]  # the machine's state right now
    timed = measure(jax_call(compiled, *args), repeats)
    times, cpu, med = timed["times_s"], timed["cpu_s"], timed["median_s"]
    res.update(times_s=times, median_s=med, tokens_per_s=cfg["B"] * cfg["T"] / med,
               cpu_per_wall=sum(cpu) / sum(times))
    flops = res.get("flops") or res.get("flops_xla_raw")
    if flops:
        res["gflops"] = flops / med / 1e9
        res["pct_of_dense"] = 100.0 * res["gflops"] / dense
        res["pct_of_dense_local"] = 100.0 * res["gflops"] / res["dense_gflops_local"]
    if res.get("dot_flops"):
        res["dot_gflops"] = res["dot_flops"] / med / 1e9
    if res.get("flops_xla_raw"):
        res["gflops_xla_raw"] = res["flops_xla_raw"] / med / 1e9
    return res


def run_config(cfg: dict, args, dense: float, report=None) -> dict:
    """Check, compile, time one configuration; ``report(row)`` (if given) receives the row after every phase."""
    report = report or (lambda row: None)
    row = dict(cfg)
    try:
        inputs = make_inputs(cfg["memory"], cfg["B"], cfg["T"], cfg["H"], cfg["Dk"], cfg["Dv"])
        row["cached_memories"] = cfg["cached_memories"] = cached_memories(cfg)
        try:
            row.update(check_shape(cfg, inputs))
        except Exception as e:  # noqa: BLE001
            row.update(checked=False, check_error=repr(e))
        max_bytes = args.max_gb * 2**30
        fargs = tuple(inputs[n] for n in ("q", "k", "v", "u", "gates", "params"))
        report(row)
        row["forward"] = run_phase(forward_fn(cfg), fargs, cfg, args.repeats, max_bytes, dense)
        report(row)
        if not args.skip_backward:
            row["fwd_bwd"] = run_phase(fwd_bwd_fn(cfg), fargs + (inputs["ct"],), cfg, args.repeats, max_bytes, dense)
    except Exception as e:  # noqa: BLE001 - one configuration must not stop the run
        row["error"] = repr(e)
        row["traceback"] = traceback.format_exc(limit=6)
    return row


def _child(cfg: dict, args, dense: float, conn) -> None:
    row = run_config(cfg, args, dense, report=lambda r: conn.send(("partial", r)))
    conn.send(("done", row))
    conn.close()


def run_config_isolated(cfg: dict, args, dense: float) -> dict:
    """:func:`run_config` in a fresh process, killed after ``--config-timeout`` s (a hang in XLA cannot be caught)."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(cfg, args, dense, send), daemon=True)
    proc.start()
    send.close()
    row, deadline = dict(cfg), time.monotonic() + args.config_timeout
    while True:
        left = deadline - time.monotonic()
        try:
            if left <= 0 or not receive.poll(left):
                row["error"] = (f"timed out after {args.config_timeout:.0f} s (process killed) in the phase after "
                                f"{[k for k in ('checked', 'forward') if k in row] or 'start'}")
                break
            kind, row = receive.recv()
        except EOFError:  # the child died without a word (crash, out of memory)
            row["error"] = f"the process running this configuration died (exit code {proc.exitcode})"
            break
        if kind == "done":
            break
    if proc.is_alive():
        proc.kill()
    proc.join(10)
    return row


# --------------------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------------------
COLUMNS = ("memory", "agg", "T", "C", "fwd ms", "fwd tok/s", "fwd GF/s", "fwd %mm", "f+b ms", "f+b tok/s",
           "f+b GF/s", "f+b %mm", "fwd MiB", "f+b MiB", "f+b KiB/seg", "buf/HT^2", "cpu/wall", "chk")


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table_row(row: dict) -> list[str]:
    f, fb = row.get("forward") or {}, row.get("fwd_bwd") or {}
    mib = lambda p: None if not p.get("memory") else p["memory"]["peak_bytes"] / 2**20
    ms = lambda p: None if p.get("median_s") is None else 1e3 * p["median_s"]
    per_seg = fb.get("peak_bytes_per_cached_memory")
    ratios = [p["largest_buffer"]["elements_per_head_TxT"] for p in (f, fb) if p.get("largest_buffer")]
    status = "ERR" if "error" in row else ("yes" if row.get("checked") else "NO")
    cells = [row["memory"], row["aggregation"], str(row["T"]), str(row["segment_size"]),
             _fmt(ms(f), ".1f"), _fmt(f.get("tokens_per_s"), ".3g"), _fmt(f.get("gflops"), ".1f"),
             _fmt(f.get("pct_of_dense"), ".1f"),
             _fmt(ms(fb), ".1f"), _fmt(fb.get("tokens_per_s"), ".3g"), _fmt(fb.get("gflops"), ".1f"),
             _fmt(fb.get("pct_of_dense"), ".1f"),
             _fmt(mib(f), ".0f"), _fmt(mib(fb), ".0f"), _fmt(None if per_seg is None else per_seg / 1024, ".0f"),
             _fmt(max(ratios) if ratios else None, ".2f"), _fmt(fb.get("cpu_per_wall", f.get("cpu_per_wall")), ".2f"),
             status]
    if f.get("skipped"):
        cells[4] = "skip"
    if fb.get("skipped"):
        cells[8] = "skip"
    return cells


def print_table(rows: list[dict], file=sys.stdout) -> None:
    body = [table_row(r) for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(COLUMNS)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    print(line(COLUMNS), file=file)
    for b in body:
        print(line(b), file=file)
    for r in rows:
        for phase in ("forward", "fwd_bwd"):
            if (r.get(phase) or {}).get("skipped"):
                print(f"  skipped {r['memory']}/{r['aggregation']} T={r['T']} C={r['segment_size']} {phase}: "
                      f"{r[phase]['skipped']}", file=file)
        if "error" in r:
            print(f"  error {r['memory']}/{r['aggregation']} T={r['T']} C={r['segment_size']}: {r['error']}",
                  file=file)


def row_key(row: dict) -> tuple:
    return (row["memory"], row["aggregation"], row["segmentation"], row["B"], row["T"], row["H"], row["Dk"],
            row["Dv"], row["segment_size"])


def write_json(path: Path, header: dict, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({**header, "results": rows}, indent=1, default=float))
    tmp.replace(path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memories", nargs="+", default=list(MEMORIES), choices=MEMORIES)
    p.add_argument("--aggregations", nargs="+", default=list(AGGREGATIONS), choices=AGGREGATIONS)
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384])
    p.add_argument("--segment-sizes", nargs="+", type=int, default=[64, 256])
    p.add_argument("--segmentation", default="constant", choices=("constant", "log"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64, help="Dk = Dv")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per phase (after one warm-up)")
    p.add_argument("--dense-size", type=int, default=2048, help="n of the n x n @ n x n reference matmul")
    p.add_argument("--quick", action="store_true", help="smoke run: B=1, T=1024 only")
    p.add_argument("--skip-backward", action="store_true", help="forward only")
    p.add_argument("--max-gb", type=float, default=12.0, help="skip a phase whose compiled memory exceeds this")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--openblas-default", action="store_true",
                   help="do not set OPENBLAS_NUM_THREADS=1 (see the comment at the top of this file)")
    p.add_argument("--no-isolate", action="store_true",
                   help="run every configuration in this process (default: a fresh process per configuration)")
    p.add_argument("--config-timeout", type=float, default=900.0,
                   help="seconds before an isolated configuration is killed and recorded as timed out")
    p.add_argument("--append", action="store_true", help="keep the rows already in --out (same key: replaced)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.batch, args.lengths = 1, [1024]
    header = {"machine": machine_info()}
    dense = dense_matmul_gflops(args.dense_size)
    header["dense_matmul"] = dense
    header["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    header["notes"] = ("gflops = loop-corrected HLO FLOPs (flops) / median_s; flops_xla_raw is XLA's cost_analysis, "
                       "which counts a while-loop body once. pct_of_dense = gflops / dense_matmul.gflops. Memory = "
                       "compiled.memory_analysis() argument + output + temp bytes.")
    m = header["machine"]
    print(f"# mc_jax.ops.memory_caching benchmark  {m['date']}  git {m['git_revision']}")
    print(f"# machine: {m['cpu_model'] or m['processor']}  os.cpu_count={m['os_cpu_count']} usable={m['cpus_usable']}"
          f"  devices={m['devices']}  jax {m['jax_version']}")
    print(f"# dense f32 matmul {dense['n']}^3: {dense['gflops']:.1f} GFLOP/s (median of {dense['repeats']}; "
          f"best {dense['best_gflops']:.1f}; cpu/wall {dense['cpu_per_wall']:.2f})")
    print(f"# B={args.batch} H={args.heads} Dk=Dv={args.dim} segmentation={args.segmentation} init=independent "
          f"ssc top_k={TOP_K} repeats={args.repeats}", flush=True)

    rows: list[dict] = []
    runs: list[dict] = []
    if args.append and args.out.exists():
        previous = json.loads(args.out.read_text())
        rows = previous.get("results", [])
        runs = previous.get("runs") or [{k: previous[k] for k in ("machine", "dense_matmul", "settings")
                                         if k in previous}]
    runs.append({k: header[k] for k in ("machine", "dense_matmul", "settings")})
    header["runs"] = runs  # every invocation that wrote rows to this file (rows carry their run index)
    configs = []
    for t in args.lengths:
        for c in args.segment_sizes:
            for memory in args.memories:
                for aggregation in args.aggregations:
                    configs.append(dict(memory=memory, aggregation=aggregation, segmentation=args.segmentation,
                                        B=args.batch, T=t, H=args.heads, Dk=args.dim, Dv=args.dim, segment_size=c))
    done = []
    for i, cfg in enumerate(configs):
        start = time.perf_counter()
        if args.no_isolate:
            row = run_config(cfg, args, dense["gflops"])
        else:
            row = run_config_isolated(cfg, args, dense["gflops"])
        row["dense_gflops"] = dense["gflops"]
        row["run"] = len(runs) - 1
        row["wall_s"] = time.perf_counter() - start
        row["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        done.append(row)
        rows = [r for r in rows if row_key(r) != row_key(row)] + [row]
        write_json(args.out, header, rows)
        print(f"[{i + 1}/{len(configs)}] {row['wall_s']:.0f}s", flush=True)
        print_table([row])
        sys.stdout.flush()
    print("\n# summary")
    print_table(done)
    print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
