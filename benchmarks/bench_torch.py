"""mc_jax against the vectorised PyTorch code of the same equations (issue 15's comparison), forward and backward.

For every T x C x init x aggregation (linear memory, constant segments, B=2 H=4 Dk=Dv=64, float32) it times

  * ``mc_jax.ops.memory_caching(..., memory="linear", impl="xla")`` and ``impl="auto"``, each under ``jax.jit``
    (compiled before timing);
  * :func:`benchmarks.torch_reference.memory_caching_linear` eagerly and under ``torch.compile`` (``--no-compile``
    to skip it: inductor compiles C++ for every configuration, ~30 s each on a loaded 2-core CPU);
  * its line-for-line JAX port (:mod:`benchmarks.jax_reference`, column ``port``) under ``jax.jit``: the torch
    code's algorithm on mc_jax's compiler, so ``torch/port`` is the backend's share of a gap and ``port/auto`` the
    share of mc_jax's algorithms;

for the forward (torch: under ``torch.no_grad()``, as jit's forward keeps no residuals) and the forward+backward
(loss = mean(y^2); gradients of q, k, v and, for grm, u). One warm-up call, then the median of ``--repeats`` calls.
The ratios are torch time / mc_jax time (above 1: mc_jax is faster). Every configuration also checks that torch and
mc_jax agree on the output and the gradients (float32: max |diff| / max |reference| <= 1e-4 for each, against
``impl="xla"``; the float64 equality to 1e-10 is tests/benchmarks/test_references.py).

Usage (needs the optional extra: ``pip install -e '.[torch]'``)::

    python -m benchmarks.bench_torch --quick            # smoke run: T=256, C=64, one repeat, no torch.compile
    python -m benchmarks.bench_torch                    # T 1024 4096, C 64 256, both inits, grm + residual

Results: a table on stdout and JSON at ``--out`` (default ``benchmarks/results/bench_torch.json``; ``--quick``
writes ``bench_torch_quick.json``), rewritten after every configuration, with torch / jax versions, thread settings
and machine information.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``mc_jax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_ops import machine_info, write_json  # noqa: E402 (sets OPENBLAS_NUM_THREADS first)

try:
    import torch
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("benchmarks/bench_torch.py needs PyTorch, the optional extra: pip install -e '.[torch]' "
             "(a CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import jax_reference  # noqa: E402
from benchmarks.timing import measure  # noqa: E402
from benchmarks.torch_reference import memory_caching_linear  # noqa: E402
from mc_jax.ops import memory_caching  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_torch.json"
IMPLS = ("xla", "auto", "port")  # mc_jax's two, and the JAX port of the torch code
ROW_KEY = {"xla": "mc_jax_xla", "auto": "mc_jax_auto", "port": "jax_port"}
CHECK_TOL = 1e-4  # float32, each of y, dq, dk, dv, du against impl="xla": max |diff| / max |reference|
COLUMNS = ["T", "C", "init", "agg"] + [f"{n} {p}" for n in ("xla", "auto", "port", "torch", "t.comp")
                                      for p in ("fwd", "f+b")] \
    + ["torch/auto fwd", "torch/auto f+b", "comp/auto f+b", "torch/xla f+b", "torch/port f+b", "err"]


def make_inputs(batch: int, length: int, heads: int, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 ``q, k`` of unit norm (as the layer gives them), ``v, u`` standard normal, ``[B, T, H, D]``."""
    rng = np.random.default_rng(seed)
    normal = lambda: rng.standard_normal((batch, length, heads, dim), dtype=np.float32)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    return {"q": unit(normal()), "k": unit(normal()), "v": normal(), "u": normal()}


def relative_error(x: np.ndarray, reference: np.ndarray) -> float:
    """``max |x - reference| / max |reference|``."""
    return float(np.max(np.abs(x - reference))) / (float(np.max(np.abs(reference))) or 1.0)


def jax_phases(cfg: dict, x: dict[str, np.ndarray], impl: str, repeats: int) -> tuple[dict, np.ndarray]:
    """Forward and forward+backward under jit of mc_jax (``impl``) or, for ``impl="port"``, of the JAX port of the
    torch code (:mod:`benchmarks.jax_reference`); also returns ``[y, dq, dk, dv (, du)]``."""
    grm = cfg["aggregation"] == "grm"
    names = ("q", "k", "v", "u") if grm else ("q", "k", "v")
    args = [jnp.asarray(x[n]) for n in names]
    kw = dict(aggregation=cfg["aggregation"], segment_size=cfg["C"], init=cfg["init"])
    if impl == "port":
        forward = lambda q, k, v, u=None: jax_reference.memory_caching_linear(q, k, v, u, **kw)
    else:
        forward = lambda q, k, v, u=None: memory_caching(q, k, v, u=u, memory="linear", impl=impl, **kw)
    loss = lambda *a: jnp.mean(forward(*a) ** 2)
    result, compiled = {}, {}
    for phase, fn in (("fwd", forward), ("fwd_bwd", jax.value_and_grad(loss, argnums=tuple(range(len(args)))))):
        start = time.perf_counter()
        compiled[phase] = jax.jit(fn).lower(*args).compile()
        compile_s = time.perf_counter() - start
        run = lambda: jax.block_until_ready(compiled[phase](*args))
        result[phase] = {**measure(run, repeats), "compile_s": compile_s}
    _, grads = compiled["fwd_bwd"](*args)
    return result, [np.asarray(compiled["fwd"](*args))] + [np.asarray(g) for g in grads]


def torch_phases(cfg: dict, x: dict[str, np.ndarray], repeats: int, compile_: bool) -> tuple[dict, np.ndarray]:
    """Forward (no_grad) and forward+backward of the torch reference, eager or ``torch.compile``d; also returns
    ``[y, dq, dk, dv (, du)]``."""
    grm = cfg["aggregation"] == "grm"
    kw = dict(aggregation=cfg["aggregation"], segment_size=cfg["C"], init=cfg["init"])
    fn = lambda q, k, v, u: memory_caching_linear(q, k, v, u, **kw)
    if compile_:
        torch._dynamo.reset()  # a fresh cache per configuration (else dynamo's recompile limit falls back to eager)
        fn = torch.compile(fn, dynamic=False)
    leaves = {n: torch.from_numpy(x[n].copy()) for n in ("q", "k", "v", "u")}
    for n in ("q", "k", "v") + (("u",) if grm else ()):
        leaves[n].requires_grad_(True)
    args = [leaves[n] for n in ("q", "k", "v", "u")]

    def forward():
        with torch.no_grad():
            return fn(*args)

    def fwd_bwd():
        for a in args:
            a.grad = None
        loss = torch.mean(fn(*args) ** 2)
        loss.backward()
        return loss

    result = {"fwd": measure(forward, repeats), "fwd_bwd": measure(fwd_bwd, repeats)}
    fwd_bwd()
    return result, [forward().numpy()] + [a.grad.numpy() for a in args if a.requires_grad]


def run_config(cfg: dict, args) -> dict:
    x = make_inputs(args.batch, cfg["T"], args.heads, args.dim, seed=cfg["T"] + cfg["C"])
    row = {**cfg, "B": args.batch, "H": args.heads, "Dk": args.dim, "Dv": args.dim}
    outputs = {}
    for impl in IMPLS:
        row[ROW_KEY[impl]], outputs[impl] = jax_phases(cfg, x, impl, args.repeats)
    row["torch_eager"], outputs["torch"] = torch_phases(cfg, x, args.repeats, compile_=False)
    if not args.no_compile:
        try:
            row["torch_compile"], outputs["torch_compile"] = torch_phases(cfg, x, args.repeats, compile_=True)
        except Exception as e:  # noqa: BLE001 - inductor needs a C++ toolchain; record why and go on
            row["torch_compile"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    row["rel_max_error_vs_xla"] = {n: max(relative_error(a, b) for a, b in zip(values, outputs["xla"]))
                                   for n, values in outputs.items()}
    row["checked"] = all(e <= CHECK_TOL for e in row["rel_max_error_vs_xla"].values())
    seconds = lambda name, phase: ((row.get(name) or {}).get(phase) or {}).get("median_s")
    ratio = lambda a, b: None if a is None or b is None else a / b
    row["ratios"] = {f"{who}/{impl}_{phase}": ratio(seconds(f"torch_{who}", phase), seconds(ROW_KEY[impl], phase))
                     for who in ("eager", "compile") for impl in IMPLS for phase in ("fwd", "fwd_bwd")}
    return row


def table_row(row: dict) -> list[str]:
    fmt = lambda x, spec: "-" if x is None else format(x, spec)
    seconds = lambda name, phase: ((row.get(name) or {}).get(phase) or {}).get("median_s")
    ms = lambda name, phase: fmt(None if seconds(name, phase) is None else 1e3 * seconds(name, phase), ".1f")
    r = row["ratios"]
    return [str(row["T"]), str(row["C"]), row["init"], row["aggregation"],
            *(ms(name, phase) for name in (*ROW_KEY.values(), "torch_eager", "torch_compile")
              for phase in ("fwd", "fwd_bwd")),
            fmt(r["eager/auto_fwd"], ".2f"), fmt(r["eager/auto_fwd_bwd"], ".2f"), fmt(r["compile/auto_fwd_bwd"], ".2f"),
            fmt(r["eager/xla_fwd_bwd"], ".2f"), fmt(r["eager/port_fwd_bwd"], ".2f"),
            f"{max(row['rel_max_error_vs_xla'].values()):.1e}" + ("" if row["checked"] else " NO")]


def print_table(rows: list[dict]) -> None:
    body = [table_row(r) for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(COLUMNS)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    print(line(COLUMNS))
    for b in body:
        print(line(b))
    for r in rows:
        if "error" in (r.get("torch_compile") or {}):
            print(f"  torch.compile failed at T={r['T']} C={r['C']} {r['init']} {r['aggregation']}: "
                  f"{r['torch_compile']['error'].splitlines()[0]}")


def environment(argv) -> dict:
    info = machine_info()
    info["command"] = " ".join([Path(sys.executable).name, "-m", "benchmarks.bench_torch"] + list(argv))
    info.update({
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
    })
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096])
    p.add_argument("--segment-sizes", nargs="+", type=int, default=[64, 256])
    p.add_argument("--inits", nargs="+", default=["independent", "checkpoint"], choices=("independent", "checkpoint"))
    p.add_argument("--aggregations", nargs="+", default=["grm", "residual"], choices=("grm", "residual"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64, help="Dk = Dv")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per phase (after one warm-up)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (eager torch only)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--quick", action="store_true", help="smoke run: T=256, C=64, one repeat, no torch.compile")
    p.add_argument("--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.segment_sizes, args.repeats, args.no_compile = [256], [64], 1, True
    if args.out is None:
        args.out = DEFAULT_OUT.with_name("bench_torch_quick.json") if args.quick else DEFAULT_OUT
    for name in ("lengths", "segment_sizes"):
        if any(n < 1 for n in getattr(args, name)):
            p.error(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    header = {"machine": environment(argv), "settings": {k: str(v) if isinstance(v, Path) else v
                                                         for k, v in vars(args).items()},
              "notes": "median_s of --repeats after one warm-up; ratios = torch time / mc_jax time (> 1: mc_jax "
                       "faster); torch forward under no_grad; loss = mean(y^2), gradients of q, k, v (and u for grm)"}
    m = header["machine"]
    print(f"# mc_jax vs PyTorch (linear memory, constant segments)  {m['date']}  git {m['git_revision']}")
    print(f"# {m['cpu_model'] or m['processor']}  usable cpus={m['cpus_usable']}  jax {m['jax_version']}  "
          f"torch {m['torch_version']} (threads {m['torch_num_threads']})  XLA_FLAGS={m['XLA_FLAGS']}")
    print(f"# B={args.batch} H={args.heads} Dk=Dv={args.dim} float32 repeats={args.repeats} "
          f"torch.compile={'no' if args.no_compile else 'yes'}; times in ms", flush=True)
    rows = []
    configs = [dict(T=t, C=c, init=i, aggregation=a) for t in args.lengths for c in args.segment_sizes
               for i in args.inits for a in args.aggregations]
    for cfg in configs:
        try:
            rows.append(run_config(cfg, args))
        except Exception as e:  # noqa: BLE001 - record the failure, keep the rest of the run
            print(f"  failed {cfg}: {type(e).__name__}: {e}", flush=True)
            rows.append({**cfg, "error": traceback.format_exc()[-4000:]})
        write_json(args.out, header, rows)
    good = [r for r in rows if "error" not in r]
    if good:
        print_table(good)
    print(f"# wrote {args.out}")
    return 0 if all("error" not in r and r["checked"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
