"""Where the compiled op spends its time, per XLA instruction: a ``jax.profiler`` trace of ``memory_caching``.

The jitted forward (or forward+backward: the gradient of ``mean(y^2)`` w.r.t. q, k, v, u) runs ``--repeats`` times
inside a trace; the trace's events are summed per instruction (``dot.12``, ``multiply_bitcast_fusion.3``, ...) and
per kind (the name without its number), in milliseconds per call. XLA:CPU's thunk executor runs independent
instructions concurrently on the machine's cores, so the per-instruction times add up to more than the wall time
(printed beside them): read the kinds as shares, not as a sum. ``--hlo`` prints the fused computation of the
heaviest instructions (what each one computes, from the compiled module's text).

Usage: ``python -m benchmarks.profile_ops [--memory linear] [--aggregation grm] [--T 4096] [--C 64]
[--init independent] [--forward-only] [--top 15] [--hlo 2] [--out results/profile_ops.json]``
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_ops import machine_info, make_inputs  # noqa: E402
from benchmarks.timing import jax_call, measure  # noqa: E402
from mc_jax.ops import memory_caching  # noqa: E402


def compiled_op(args):
    x = make_inputs(args.memory, args.batch, args.T, args.heads, args.dim, args.dim)
    op = lambda q, k, v, u: memory_caching(q, k, v, u=u, memory=args.memory, aggregation=args.aggregation,
                                           segment_size=args.C, init=args.init, gates=x["gates"],
                                           params=x["params"], top_k=2 if args.aggregation == "ssc" else None)
    fn = op if args.forward_only else jax.grad(lambda *a: jnp.mean(op(*a) ** 2), argnums=(0, 1, 2, 3))
    inputs = (x["q"], x["k"], x["v"], x["u"])
    return jax.jit(fn).lower(*inputs).compile(), inputs


INSTRUCTION = re.compile(r"[a-z][\w\-]*(\.\d+)?")


def instruction_times(call, repeats: int) -> dict[str, float]:
    """Milliseconds per call of every traced XLA instruction (events named like one, ``dot.12``: not the Python
    frames, the jitted function or the executor)."""
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            for _ in range(repeats):
                call()
        trace = next(Path(folder).rglob("*.trace.json.gz"))
        events = json.load(gzip.open(trace))["traceEvents"]
    times: collections.Counter = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and INSTRUCTION.fullmatch(name):
            times[name] += e["dur"] / 1e3 / repeats
    return dict(times)


def by_kind(times: dict[str, float]) -> dict[str, float]:
    kinds: collections.Counter = collections.Counter()
    for name, ms in times.items():
        kinds[re.sub(r"\.\d+$", "", name)] += ms
    return dict(kinds.most_common())


def fused_computation(hlo: str, name: str) -> str:
    """The instruction ``name`` and the body of the computation it calls (empty when it calls none)."""
    line = next((x for x in hlo.splitlines() if re.search(rf"%{re.escape(name)} = ", x)), "")
    called = re.search(r"calls=%([\w.\-]+)", line)
    body = re.search(rf"^%{re.escape(called.group(1))} .*?^}}", hlo, re.S | re.M) if called else None
    return line.strip() + ("\n" + body.group(0) if body else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--memory", default="linear")
    p.add_argument("--aggregation", default="grm")
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--C", type=int, default=64)
    p.add_argument("--init", default="independent")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--forward-only", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--hlo", type=int, default=0, help="print the fused computation of the N heaviest instructions")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    compiled, inputs = compiled_op(args)
    call = jax_call(compiled, *inputs)
    wall = 1e3 * measure(call, args.repeats)["median_s"]
    times = instruction_times(call, args.repeats)
    kinds = by_kind(times)
    total = sum(times.values())
    print(f"{args.memory} + {args.aggregation}, T={args.T} C={args.C} {args.init}, "
          f"{'forward' if args.forward_only else 'forward+backward'}: wall {wall:.1f} ms, instructions {total:.1f} ms")
    for kind, ms in list(kinds.items())[:args.top]:
        print(f"  {ms:8.2f} ms  {100 * ms / total:5.1f} %  {kind}")
    heaviest = sorted(times, key=times.get, reverse=True)
    for name in heaviest[:args.hlo]:
        print(f"\n{name}: {times[name]:.2f} ms\n{fused_computation(compiled.as_text(), name)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "wall_ms": wall,
                                        "instructions_ms": total, "kinds_ms": kinds, "machine": machine_info()},
                                       indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
