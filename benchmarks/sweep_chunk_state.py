"""Where the chunk-state kernel's time goes on a GPU, and which launch settings help.

Times, on kernel-layout inputs (the per-chunk terms precomputed by XLA, as ``api`` does):
  * ``xla scan``: ``reference.scan_terms`` (the XLA op's sequential part, a ``lax.scan`` of batched matmuls),
  * ``pallas``: ``chunk_state_pallas`` for every (in-kernel matmul precision, num_warps, block_v) in the sweep,
and the error of each against the XLA scan at ``highest`` precision. Prints a table and writes JSON.

Usage: python benchmarks/sweep_chunk_state.py [--out sweep.json] [--reps 10]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.timing import median_ms  # noqa: E402
from mc_jax.kernels._common import PRECISIONS  # noqa: E402
from mc_jax.kernels.chunk_state import api, reference  # noqa: E402
from mc_jax.kernels.chunk_state.pallas import chunk_state_pallas  # noqa: E402

SHAPES = [dict(b=1, t=8192, h=4, d=64), dict(b=8, t=1024, h=16, d=64), dict(b=1, t=8192, h=4, d=128)]


def _inputs(c, memory):
    ks = jax.random.split(jax.random.key(0), 4)
    b, t, h, d = c["b"], c["t"], c["h"], c["d"]
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    k = unit(jax.random.normal(ks[0], (b, t, h, d)))
    v = jax.random.normal(ks[1], (b, t, h, d))
    gates = {"log_decay": -0.1 * jax.nn.softplus(jax.random.normal(ks[2], (b, t, h)))}
    if memory == "delta":
        gates["beta"] = jax.nn.sigmoid(jax.random.normal(ks[3], (b, t, h)))
    return k, v, gates, jnp.zeros((b, h, d, d), jnp.float32)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--memory", default="delta", choices=("gated_linear", "delta"))
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="one tiny shape (a CPU check of the script)")
    args = p.parse_args(argv)
    on_cpu = jax.default_backend() == "cpu"
    shapes = [dict(b=1, t=256, h=2, d=32)] if args.smoke else SHAPES
    rows = []
    print(f"{'B':>3}{'T':>6}{'H':>4}{'D':>5} {'variant':<34}{'ms':>9}{'vs scan':>9}{'err':>10}", flush=True)
    for c in shapes:
        k, v, gates, s0 = _inputs(c, args.memory)
        with jax.default_matmul_precision("highest"):
            terms = jax.jit(lambda k, v, g: reference.chunk_terms(k, v, g, 64))(k, v, gates)
            scan = jax.jit(lambda terms, s: reference.scan_terms(terms, s))
            ref = scan(terms, s0)
            scan_ms = median_ms(scan, terms, s0, repeats=args.reps)
        rows.append(dict(**c, variant="xla scan (highest)", ms=scan_ms, err=0.0))
        print(f"{c['b']:>3}{c['t']:>6}{c['h']:>4}{c['d']:>5} {'xla scan (highest)':<34}{scan_ms:>9.3f}", flush=True)
        k_to_end, u_hat, w, total = terms
        r, n, h, _, dk = k_to_end.shape
        dv = u_hat.shape[-1]
        decay = jnp.broadcast_to(jnp.exp(total)[..., None, None], (r, n, h, 1, dv))
        kin = (api._to_rows(jnp.swapaxes(k_to_end, -1, -2)), api._to_rows(u_hat),
               None if w is None else api._to_rows(w), api._to_rows(decay), s0.reshape(r * h, dk, dv))
        for pname, warps, bv in itertools.product(PRECISIONS, (4, 8), sorted({32, 64, dv})):
            if dv % bv:
                continue
            name = f"pallas prec={pname} warps={warps} bv={bv}"
            try:
                fn = jax.jit(lambda *a, bv=bv, warps=warps, pname=pname: chunk_state_pallas(
                    *a, block_v=bv, strategy="gpu", interpret=on_cpu, num_warps=warps, precision=pname))
                out = fn(*kin)
                err = max(float(jnp.max(jnp.abs(api._from_rows(out[0], r) - ref[0]))),
                          float(jnp.max(jnp.abs(out[2].reshape(ref[2].shape) - ref[2]))))
                ms = median_ms(fn, *kin, repeats=args.reps)
            except Exception as e:  # noqa: BLE001 - a launch setting the backend rejects is a result too
                print(f"{c['b']:>3}{c['t']:>6}{c['h']:>4}{c['d']:>5} {name:<34} failed: {type(e).__name__}: "
                      f"{str(e)[:120]}", flush=True)
                rows.append(dict(**c, variant=name, ms=None, err=None, error=str(e)[:500]))
                continue
            rows.append(dict(**c, variant=name, ms=ms, err=err))
            print(f"{c['b']:>3}{c['t']:>6}{c['h']:>4}{c['d']:>5} {name:<34}{ms:>9.3f}{scan_ms / ms:>8.2f}x"
                  f"{err:>10.1e}", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
                                                          memory=args.memory, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
