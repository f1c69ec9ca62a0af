"""The compiled gradient of ``init="checkpoint"`` against ``init="independent"`` (no timing: compile-time figures).

    python -m benchmarks.compare_inits                 # linear + grm, T=1024, C=64, chunk 64, B=2 H=4 D=64
    python -m benchmarks.compare_inits --wrt k         # the gradient of k alone

For each init: executed FLOPs (:mod:`benchmarks.hlo_cost`, loop bodies times their trip counts) and XLA's own
``cost_analysis()`` FLOPs (a loop body once), ``memory_analysis()`` peak, the ``while`` loops (trips, FLOPs of one
body), the copies / transposes and the largest buffers of the jitted ``grad`` of ``sum(y * ct)``
(``impl="auto"``). JSON in ``benchmarks/results/compare_inits.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.hlo_cost import HloCost, memory_bytes, xla_flops  # noqa: E402
from mc_jax.ops import memory_caching  # noqa: E402

ARGNUMS = {"all": (0, 1, 2, 3), "q": (0,), "k": (1,), "v": (2,), "u": (3,)}


def census(init: str, args) -> dict:
    b, t, h, d = args.batch, args.length, args.heads, args.dim
    q, k, v, u, ct = (jax.random.normal(key, (b, t, h, d)) for key in jax.random.split(jax.random.key(0), 5))
    kw = dict(memory="linear", aggregation="grm", segment_size=args.segment_size, init=init, chunk_size=args.chunk,
              impl=args.impl)
    loss = lambda q, k, v, u: jnp.sum(ct * memory_caching(q, k, v, u=u, **kw))
    compiled = jax.jit(jax.grad(loss, argnums=ARGNUMS[args.wrt])).lower(q, k, v, u).compile()
    hlo = HloCost(compiled.as_text())
    cost, (copies, copy_bytes) = hlo.cost(), hlo.copies()
    return dict(init=init, gflops=cost.flops / 1e9, dot_gflops=cost.dot_flops / 1e9,
                xla_gflops=(xla_flops(compiled) or 0) / 1e9, peak_mib=memory_bytes(compiled)["peak_bytes"] / 2**20,
                loops=hlo.loops(), copies=copies, copy_mib=copy_bytes / 2**20,
                largest=[(n / 2**20, shape) for n, shape, _ in hlo.largest_buffers(4)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--segment-size", type=int, default=64)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--impl", default="auto")
    p.add_argument("--wrt", default="all", choices=sorted(ARGNUMS))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "compare_inits.json")
    args = p.parse_args(argv)
    rows = [census(init, args) for init in ("independent", "checkpoint")]
    print("| init | GFLOP executed | dot GFLOP | XLA cost_analysis GFLOP | peak MiB | while loops (trips x body "
          "MFLOP) | copies (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        loops = ", ".join(f"{lp['trips']} x {lp['body_flops'] / 1e6:.2f}" for lp in r["loops"]) or "none"
        print(f"| {r['init']} | {r['gflops']:.3f} | {r['dot_gflops']:.3f} | {r['xla_gflops']:.3f} | "
              f"{r['peak_mib']:.1f} | {loops} | {r['copies']} ({r['copy_mib']:.1f}) |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(command=" ".join(sys.argv), settings=vars(args) | {"out": str(args.out)},
                                        rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
