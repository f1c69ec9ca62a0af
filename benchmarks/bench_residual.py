"""Residual aggregation's cached read: the exclusive prefix sum as ``jnp.cumsum`` (before) vs an associative scan (now).

Two measurements, each interleaved in one process (median of ``--repeats`` after a warm-up), float32, B=2 H=4
Dk=Dv=64, linear memory, constant segments:

* ``read``: :func:`mc_jax.ops.reads_causal.residual_prefix_read` alone (stack ``[B, N, H, Dk, Dv]``, q
  ``[B, T, H, Dk]``) with the prefix as ``jnp.cumsum`` (the code before), ``jax.lax.associative_scan`` (the code
  now) and a strictly-lower-triangular ``[N, N]`` matmul (the torch reference's form), forward and forward+backward;
* ``op``: ``memory_caching(..., aggregation="residual", impl="auto")`` compiled once with the old read patched in and
  once with the current one, for T x C x init.

Usage::

    python -m benchmarks.bench_residual --quick     # T=256, C=64, one init, 2 repeats
    python -m benchmarks.bench_residual             # T 1024 4096, C 64 256, both inits

JSON at ``--out`` (default ``benchmarks/results/bench_residual.json``; ``--quick``: ``bench_residual_quick.json``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``mc_jax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_ops import machine_info, write_json  # noqa: E402, I001 (sets OPENBLAS_NUM_THREADS first)
from benchmarks.timing import interleaved  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mc_jax.ops import memory_caching, reads_causal  # noqa: E402

B, H, D = 2, 4, 64
RESULTS = Path(__file__).resolve().parent / "results"


def _read_with(prefix_of):
    """``residual_prefix_read`` with the exclusive prefix sum ``prefix_of(stack) [b n h dk dv]``."""
    def read(stack, q, size):
        b, t, h, dk = q.shape
        n = t // size
        return jnp.einsum("bnchk,bnhkv->bnchv", q.reshape(b, n, size, h, dk), prefix_of(stack)).reshape(b, t, h, -1)
    return read


def _cumsum_prefix(stack):  # the code before (git 59e9110)
    prefix = jnp.cumsum(stack[:, :-1], axis=1)
    return jnp.concatenate([jnp.zeros_like(stack[:, :1]), prefix], axis=1)


def _matmul_prefix(stack):  # the torch reference's form: O(N^2)
    n = stack.shape[1]
    return jnp.einsum("ni,bihkv->bnhkv", jnp.tril(jnp.ones((n, n), stack.dtype), -1), stack)


OLD_READ = _read_with(_cumsum_prefix)
READS = {"cumsum (before)": OLD_READ, "associative scan (now)": reads_causal.residual_prefix_read,
         "triangular matmul": _read_with(_matmul_prefix)}


def _fwd_bwd(fn, argnums):
    return jax.value_and_grad(lambda *a: jnp.mean(fn(*a) ** 2), argnums=argnums)


def bench_read(t: int, c: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    stack = jnp.asarray(rng.standard_normal((B, t // c, H, D, D), dtype=np.float32))
    q = jnp.asarray(rng.standard_normal((B, t, H, D), dtype=np.float32))
    calls = {}
    for name, read in READS.items():
        f = lambda s, x, read=read: read(s, x, c)
        for phase, fn in (("fwd", f), ("f+b", _fwd_bwd(f, (0, 1)))):
            compiled = jax.jit(fn).lower(stack, q).compile()
            calls[f"{name} {phase}"] = lambda compiled=compiled: jax.block_until_ready(compiled(stack, q))
    return {"T": t, "C": c, "ms": interleaved(calls, repeats)}


def bench_op(t: int, c: int, init: str, repeats: int) -> dict:
    rng = np.random.default_rng(t + c)
    normal = lambda: rng.standard_normal((B, t, H, D), dtype=np.float32)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    args = [jnp.asarray(a) for a in (unit(normal()), unit(normal()), normal())]
    op = lambda q, k, v: memory_caching(q, k, v, memory="linear", aggregation="residual", segment_size=c, init=init,
                                        impl="auto")
    current, compiled, outputs = reads_causal.residual_prefix_read, {}, {}
    try:
        for version, read in (("old", OLD_READ), ("new", current)):
            reads_causal.residual_prefix_read = read  # the dispatch table looks it up at trace time
            jax.clear_caches()  # else the inner jit reuses the other version's trace
            for phase, fn in (("fwd", op), ("f+b", _fwd_bwd(op, (0, 1, 2)))):
                compiled[f"{version} {phase}"] = jax.jit(fn).lower(*args).compile()
            value, grads = compiled[f"{version} f+b"](*args)
            outputs[version] = [compiled[f"{version} fwd"](*args), *grads]
    finally:
        reads_causal.residual_prefix_read = current
    err = max(float(jnp.abs(a - b).max() / jnp.abs(b).max()) for a, b in zip(outputs["new"], outputs["old"]))
    ms = interleaved({name: (lambda f=f: jax.block_until_ready(f(*args))) for name, f in compiled.items()}, repeats)
    return {"T": t, "C": c, "init": init, "ms": ms, "old/new fwd": ms["old fwd"] / ms["new fwd"],
            "old/new f+b": ms["old f+b"] / ms["new f+b"], "rel_err_new_vs_old": err}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    lengths, sizes, inits = ((256,), (64,), ("independent",)) if args.quick else \
        ((1024, 4096), (64, 256), ("independent", "checkpoint"))
    repeats = 2 if args.quick else args.repeats
    out = args.out or RESULTS / ("bench_residual_quick.json" if args.quick else "bench_residual.json")
    command = " ".join(["python -m benchmarks.bench_residual", *(sys.argv[1:] if argv is None else argv)])
    header = {"machine": machine_info(), "command": command}
    rows = []
    for t in lengths:
        for c in sizes:
            row = {"kind": "read", **bench_read(t, c, repeats)}
            rows.append(row)
            print(f"read T={t} C={c}: " + ", ".join(f"{k} {v:.1f}" for k, v in row["ms"].items()), flush=True)
            for init in inits:
                row = {"kind": "op", **bench_op(t, c, init, repeats)}
                rows.append(row)
                print(f"op T={t} C={c} {init}: " + ", ".join(f"{k} {v:.1f}" for k, v in row["ms"].items())
                      + f"; old/new fwd {row['old/new fwd']:.2f} f+b {row['old/new f+b']:.2f}; "
                      f"err {row['rel_err_new_vs_old']:.1e}", flush=True)
            write_json(out, header, rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
