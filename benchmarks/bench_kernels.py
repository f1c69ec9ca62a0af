"""XLA vs Pallas timings of the Memory Caching kernels, each case gated by a correctness check on the same shapes.

Ops:
  chunk_state   the sequential state pass of a linear memory (``delta`` by default): ``linear.state_pass`` vs
                ``kernels.chunk_state.state_pass`` (forward; ``--grad`` adds forward + backward).
  cache_dense   gamma-weighted read of all ``M = T / segment`` cached states: ``reads.dense_mix`` vs
                ``kernels.cache_read.dense_mix``.
  cache_sparse  SSC read with ``top_k`` slots per query block: ``reads.dense_mix`` on the (mostly zero) gamma, which
                is what XLA does today, vs ``kernels.cache_read.sparse_mix`` reading only the listed states.
  e2e           the whole op ``memory_caching(..., impl="xla")`` vs ``impl="pallas"`` for ``--memory`` with
                ``--aggregation`` (``--grad``: forward + backward). Deep memories (``dla``, ``titans``) have no kernel:
                their row times XLA only and reports its FLOP rate (loop-aware count, ``hlo_cost.py``), the
                measurement behind keeping them on XLA.

Presets: ``issue`` is the issue's grid (B 1..8, T 1K..32K, H 4..16, D 64/128, segment 64..1024, top_k 1..8) for a
GPU/TPU; ``cpu`` is a small grid for this machine. On CPU the Pallas kernels run in interpret mode: their timings
are recorded but marked ``"pallas_timing": "interpret-mode (not meaningful)"``; the XLA numbers are real.

Usage: python benchmarks/bench_kernels.py --preset cpu --out bench_kernels.json [--ops chunk_state,cache_dense]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``mc_jax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_ops import make_inputs  # noqa: E402
from benchmarks.hlo_cost import HloCost, memory_bytes  # noqa: E402
from benchmarks.timing import median_ms  # noqa: E402
from mc_jax.kernels import cache_read, chunk_state  # noqa: E402
from mc_jax.ops import aggregation as agg
from mc_jax.ops import (
    memory_caching,  # noqa: E402
    reads,
)
from mc_jax.ops.memories import get_memory, linear

PRESETS = {
    # (B, T, H, D, segment, top_k)
    "issue": [dict(b=b, t=t, h=h, d=d, seg=seg, top_k=k)
              for b, t, h, d, seg, k in itertools.product((1, 8), (1024, 8192, 32768), (4, 16), (64, 128),
                                                         (64, 1024), (1, 8))
              if seg < t],
    "cpu": [dict(b=1, t=1024, h=4, d=64, seg=64, top_k=1), dict(b=1, t=1024, h=4, d=64, seg=256, top_k=2),
            dict(b=2, t=2048, h=4, d=64, seg=128, top_k=8)],
    # A subset of the issue grid that fits a few minutes of one GPU (each case compiles two programs).
    "gpu": [dict(b=b, t=t, h=h, d=d, seg=seg, top_k=k) for b, t, h, d, seg, k in (
        (1, 1024, 4, 64, 64, 1), (8, 1024, 16, 64, 64, 8), (1, 8192, 4, 64, 64, 1), (1, 8192, 4, 128, 1024, 1),
        (8, 8192, 16, 64, 256, 8), (1, 32768, 4, 64, 1024, 1), (1, 32768, 16, 128, 1024, 8), (8, 8192, 4, 128, 64, 8))],
    "smoke": [dict(b=1, t=256, h=2, d=32, seg=64, top_k=2)],
}
CHUNK = 64


def _compile(fn, *args):
    """``(compiled, peak MiB or None, loop-aware FLOPs or None)`` of ``jax.jit(fn)`` on ``args``."""
    compiled = jax.jit(fn).lower(*args).compile()
    mem = memory_bytes(compiled)
    try:
        flops = HloCost(compiled.as_text()).cost().flops
    except Exception:  # noqa: BLE001 - the counter parses HLO text; a backend may print something it does not know
        flops = None
    return compiled, (None if mem is None else mem["peak_bytes"] / 2**20), flops


def _max_rel_err(a, b) -> float:
    errs = [float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))
                  / (float(jnp.max(jnp.abs(y.astype(jnp.float32)))) + 1e-12))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return max(errs)


def _chunk_state_case(c, memory, grad, key):
    b, t, h, d = c["b"], c["t"], c["h"], c["d"]
    ks = jax.random.split(key, 4)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    k = unit(jax.random.normal(ks[0], (b, t, h, d))).astype(jnp.bfloat16)
    v = jax.random.normal(ks[1], (b, t, h, d)).astype(jnp.bfloat16)
    gates = {"log_decay": -0.1 * jax.nn.softplus(jax.random.normal(ks[2], (b, t, h)))}
    if memory == "delta":
        gates["beta"] = jax.nn.sigmoid(jax.random.normal(ks[3], (b, t, h)))
    s0 = jnp.zeros((b, h, d, d), jnp.float32)
    xla = lambda k, v, g, s: linear.state_pass(k, v, g, s, CHUNK)
    pallas = lambda k, v, g, s: chunk_state.state_pass(k, v, g, s, CHUNK)
    if grad:
        wrap = lambda f: jax.grad(lambda *a: sum(jnp.sum(x) for x in f(*a)), argnums=(0, 1, 2, 3))
        xla, pallas = wrap(xla), wrap(pallas)
    return jax.jit(xla), jax.jit(pallas), (k, v, gates, s0)


def _read_inputs(c, key, block_routing):
    b, t, h, d, seg, top_k = c["b"], c["t"], c["h"], c["d"], c["seg"], c["top_k"]
    m = t // seg
    ks = jax.random.split(key, 3)
    stack = (0.1 * jax.random.normal(ks[0], (b, m, h, d, d))).astype(jnp.float32)
    x = jax.random.normal(ks[1], (b, t, h, d), jnp.float32)
    logits = jax.random.normal(ks[2], (b, t, h, m))
    if block_routing:  # one router decision per query block (what makes a top-k read sparse per block)
        bq = _block_q(seg)
        logits = jnp.repeat(logits[:, ::bq], bq, axis=1)
    available = jnp.broadcast_to((jnp.arange(m) < (jnp.arange(t) // seg)[:, None])[None, :, None], (b, t, h, m))
    gamma, _ = agg.weights("ssc" if block_routing else "grm", logits, logits[..., 0], available,
                           top_k if block_routing else None)
    return stack, gamma, x


def _block_q(seg: int) -> int:
    """A query block inside one segment (so every token of a block sees the same cached slots)."""
    return cache_read.api.default_block_q(seg, "tpu" if jax.default_backend() == "tpu" else "gpu")


def _cache_dense_case(c, key):
    spec = get_memory("linear")
    stack, gamma, x = _read_inputs(c, key, False)
    xla = jax.jit(lambda s, g, x: reads.dense_mix(spec, "read", s, g, x, c["seg"]))
    pallas = jax.jit(lambda s, g, x: cache_read.dense_mix(spec, "read", s, g, x, c["seg"]))
    return xla, pallas, (stack, gamma, x)


def _cache_sparse_case(c, key):
    spec = get_memory("linear")
    stack, gamma, x = _read_inputs(c, key, True)
    bq = _block_q(c["seg"])
    k = min(c["top_k"], gamma.shape[-1])
    idx = cache_read.slot_indices(gamma, bq, k)
    xla = jax.jit(lambda s, g, x: reads.dense_mix(spec, "read", s, g, x, c["seg"]))
    pallas = jax.jit(lambda s, g, x: cache_read.sparse_mix(s, g, x, idx, block_q=bq))
    return xla, pallas, (stack, gamma, x)


def _e2e_case(c, memory, aggregation, grad, key, pallas_impl="pallas"):
    del key
    inp = make_inputs(memory, c["b"], c["t"], c["h"], c["d"], c["d"])
    kw = dict(memory=memory, aggregation=aggregation, segment_size=c["seg"], chunk_size=CHUNK,
              top_k=c["top_k"] if aggregation == "ssc" else None)

    def build(impl):
        def f(q, k, v, u, gates, params):
            return memory_caching(q, k, v, u=u, gates=gates, params=params, impl=impl, **kw)

        if not grad:
            return f
        return jax.grad(lambda *a: jnp.sum(f(*a[:-1]) * a[-1]), argnums=(0, 1, 2, 3, 4))

    args = (inp["q"], inp["k"], inp["v"], inp["u"], inp["gates"], inp["params"]) + ((inp["ct"],) if grad else ())
    pallas = None if get_memory(memory).family.deep else build(pallas_impl)  # deep: no kernel (XLA only)
    return build("xla"), pallas, args


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        default="cpu" if jax.default_backend() == "cpu" else "issue")
    parser.add_argument("--ops", default="chunk_state,cache_dense,cache_sparse")
    parser.add_argument("--memory", default="delta", choices=("linear", "gated_linear", "delta", "dla", "titans"),
                        help="chunk_state: a linear-family memory; e2e: any memory")
    parser.add_argument("--aggregation", default="grm", choices=("residual", "grm", "soup", "ssc"), help="e2e only")
    parser.add_argument("--grad", action="store_true", help="chunk_state / e2e: time forward + backward")
    parser.add_argument("--append", action="store_true", help="add to the records already in --out")
    parser.add_argument("--precision", default="highest", choices=("default", "high", "highest"),
                        help="XLA matmul precision (jax.default_matmul_precision); the kernels always multiply in "
                             "full fp32, so 'highest' compares like with like (GPU 'default' allows TF32)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--first-case", type=int, default=0, help="skip the preset's first cases")
    parser.add_argument("--pallas-impl", default="pallas", choices=("pallas", "auto"),
                        help="e2e: the impl of the 'pallas' column (auto: the kernels measured faster per backend)")
    parser.add_argument("--rtol", type=float, default=2e-3, help="max relative error of the correctness gate")
    parser.add_argument("--out", default=None, help="write the JSON record here")
    args = parser.parse_args(argv)
    with jax.default_matmul_precision(args.precision):
        return _run(args)


def _run(args):
    on_cpu = jax.default_backend() == "cpu"
    cases = PRESETS[args.preset][args.first_case:][: args.max_cases]
    record = dict(backend=jax.default_backend(), device=str(jax.devices()[0].device_kind), jax=jax.__version__,
                  host=platform.node(), preset=args.preset, memory=args.memory, aggregation=args.aggregation,
                  grad=args.grad,
                  precision=args.precision, pallas_impl=args.pallas_impl,
                  pallas_timing="interpret-mode (not meaningful)" if on_cpu else "native", results=[])
    key = jax.random.key(0)
    header = (f"{'op':<13}{'B':>3}{'T':>7}{'H':>4}{'D':>5}{'seg':>6}{'k':>3}{'xla ms':>10}{'pallas ms':>11}"
              f"{'speedup':>9}{'xla MiB':>9}{'pal MiB':>9}{'xla TF/s':>9}{'Mtok/s':>8}{'err':>10}")
    print(header + ("   (pallas: interpret mode, not meaningful)" if on_cpu else ""))
    fmt = lambda x, spec: "-" if x is None or x != x else format(x, spec)
    for c in cases:
        for op in args.ops.split(","):
            if op == "chunk_state":
                xla, pallas, inputs = _chunk_state_case(c, args.memory, args.grad, key)
            elif op == "cache_dense":
                xla, pallas, inputs = _cache_dense_case(c, key)
            elif op == "cache_sparse":
                xla, pallas, inputs = _cache_sparse_case(c, key)
            elif op == "e2e":
                xla, pallas, inputs = _e2e_case(c, args.memory, args.aggregation, args.grad, key, args.pallas_impl)
            else:
                raise SystemExit(f"unknown op {op!r}")
            xla_c, xla_mib, xla_flops = _compile(xla, *inputs)
            if pallas is None:
                err, ok, pal_c, pal_mib = float("nan"), True, None, None
            else:
                pal_c, pal_mib, _ = _compile(pallas, *inputs)
                err = _max_rel_err(pal_c(*inputs), xla_c(*inputs))  # correctness gate on the same shapes
                ok = err <= args.rtol
            xla_ms = median_ms(xla_c, *inputs, repeats=args.reps)
            pallas_ms = (median_ms(pal_c, *inputs, repeats=1 if on_cpu else args.reps) if ok and pal_c is not None
                         else float("nan"))
            tflops = None if xla_flops is None else xla_flops / (xla_ms * 1e-3) / 1e12
            best = min(x for x in (xla_ms, pallas_ms) if x == x) if not on_cpu else xla_ms
            mtok = c["b"] * c["t"] / (best * 1e-3) / 1e6
            row = dict(op=op, memory=args.memory, aggregation=args.aggregation if op == "e2e" else None,
                       grad=args.grad, **c, xla_ms=xla_ms, pallas_ms=pallas_ms, xla_peak_mib=xla_mib,
                       pallas_peak_mib=pal_mib, xla_flops=xla_flops, xla_tflops_per_s=tflops,
                       tokens_per_s=mtok * 1e6, max_rel_err=err, correct=ok)
            record["results"].append(row)
            speed = f"{xla_ms / pallas_ms:8.2f}x" if ok and not on_cpu and pallas_ms == pallas_ms else "       - "
            print(f"{op:<13}{c['b']:>3}{c['t']:>7}{c['h']:>4}{c['d']:>5}{c['seg']:>6}{c['top_k']:>3}"
                  f"{xla_ms:>10.2f}{fmt(pallas_ms, '.2f'):>11}{speed:>9}{fmt(xla_mib, '.0f'):>9}"
                  f"{fmt(pal_mib, '.0f'):>9}{fmt(tflops, '.2f'):>9}{mtok:>8.2f}{fmt(err, '.1e'):>10}"
                  f"{'' if ok else '  FAILED CHECK'}", flush=True)
    if args.out:
        records = []
        if args.append and Path(args.out).exists():
            old = json.loads(Path(args.out).read_text())
            records = old if isinstance(old, list) else [old]
        with open(args.out, "w") as f:
            json.dump(records + [record] if args.append else record, f, indent=1)
    return 0 if all(r["correct"] for r in record["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
