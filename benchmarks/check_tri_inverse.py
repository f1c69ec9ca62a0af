"""Matmul-only replacement for the delta rule's unit-lower-triangular solve (a proposed fix; not used by mc_jax).

``mc_jax/ops/memories/linear.py`` solves ``(I + L) X = B`` per chunk with ``jax.scipy.linalg.solve_triangular``. On
CPU that lowers to jaxlib's ``lapack_strsm_ffi`` custom call, which was ~200x slow with threaded OpenBLAS and which
deadlocked delta at T=4096 on the benchmark machine (docs/performance.md). Two custom-call-free ways to get
``A = (I + L)^{-1}`` (``L`` strictly lower triangular, hence nilpotent): the product
``prod_{j < log2 C} (I + (-L)^(2^j))`` (``2 log2 C`` matmuls, ~24x the FLOPs of the substitution) and the recursive
2x2 block inverse (about the FLOPs of the substitution). The delta rule could compute ``A`` once per chunk for both
of its right-hand sides (``U_hat = A (b V)``, ``W = A (b G K)``).

This script compares them with the LAPACK solve on the inputs the delta rule builds (unit-norm keys, beta in (0, 1),
gates in range) and times them, forward and forward+backward.

Usage: ``python -m benchmarks.check_tri_inverse [--runs 128]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchmarks.bench_ops  # noqa: E402,F401 - sets OPENBLAS_NUM_THREADS=1 like the benchmark
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.scipy.linalg import solve_triangular  # noqa: E402

from mc_jax.ops.utils import decay_matrix  # noqa: E402


def inverse_by_doubling(system):
    """``system^{-1}`` for a unit lower-triangular ``system`` (``I + L``), by repeated squaring of ``-L``."""
    c = system.shape[-1]
    eye = jnp.eye(c, dtype=system.dtype)
    power = eye - system  # -L
    inverse = eye + power
    for _ in range(max(0, math.ceil(math.log2(c)) - 1)):
        power = power @ power
        inverse = inverse + inverse @ power  # inverse (I + power)
    return inverse


def inverse_by_blocks(system, leaf: int = 16):
    """``system^{-1}`` by the 2x2 block formula ``[[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]``, recursively
    (halves down to ``leaf``, inverted by doubling): about ``c^3`` multiply-adds, like the substitution itself."""
    c = system.shape[-1]
    if c <= leaf or c % 2:
        return inverse_by_doubling(system)
    m = c // 2
    a_inv = inverse_by_blocks(system[..., :m, :m], leaf)
    d_inv = inverse_by_blocks(system[..., m:, m:], leaf)
    lower = -d_inv @ system[..., m:, :m] @ a_inv
    top = jnp.concatenate([a_inv, jnp.zeros_like(a_inv)], axis=-1)
    return jnp.concatenate([top, jnp.concatenate([lower, d_inv], axis=-1)], axis=-2)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=128, help="independent chunks (B * T / C)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--dim", type=int, default=64)
    a = p.parse_args(argv)
    r, h, c, d = a.runs, a.heads, a.chunk, a.dim
    keys = jax.random.split(jax.random.key(0), 4)
    k = jax.random.normal(keys[0], (r, h, c, d))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = jax.random.normal(keys[1], (r, h, c, d))
    beta = jax.nn.sigmoid(jax.random.normal(keys[2], (r, h, c)))
    g = -jax.nn.softplus(jax.random.normal(keys[3], (r, h, c))) * 0.5
    system = jnp.tril(beta[..., :, None] * (k @ jnp.swapaxes(k, -1, -2)) * decay_matrix(g), -1) + jnp.eye(c)
    rhs = beta[..., None] * v

    lapack = jax.jit(lambda s, b: solve_triangular(s, b, lower=True, unit_diagonal=True))
    matmul = jax.jit(lambda s, b: inverse_by_doubling(s) @ b)
    blocks = jax.jit(lambda s, b: inverse_by_blocks(s) @ b)
    x_lapack = lapack(system, rhs)
    err = lambda x: float(jnp.max(jnp.abs(x - x_lapack)) / jnp.max(jnp.abs(x_lapack)))
    print(f"runs={r} heads={h} chunk={c} dim={d}: max |x - x_lapack| / max |x_lapack|: doubling "
          f"{err(matmul(system, rhs)):.2e}, blocks {err(blocks(system, rhs)):.2e}")

    def timed(f, *args, repeats=5):
        jax.block_until_ready(f(*args))
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(f(*args))
            ts.append(time.perf_counter() - t)
        return 1e3 * statistics.median(ts)

    grad = lambda f: jax.jit(jax.grad(lambda s, b: jnp.sum(f(s, b) ** 2), argnums=(0, 1)))
    for name, f in (("lapack_strsm", lapack), ("matmul doubling", matmul), ("matmul 2x2 blocks", blocks)):
        print(f"{name:>18}: forward {timed(f, system, rhs):7.1f} ms, fwd+bwd {timed(grad(f), system, rhs):7.1f} ms",
              flush=True)

if __name__ == "__main__":
    main()
