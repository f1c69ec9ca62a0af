"""Where the time of linear + grm goes: the parallel form timed piece by piece.

``mc_sequence`` (constant segmentation, independent init, linear memory) is four stages; each is jit-compiled and
timed here on its own, forward and forward+backward, with the same loop-corrected FLOP count as ``bench_ops``:

  state    ``stages.compress_independent``: every segment an independent chunk-wise run -> chunk data + finals
  online   ``memories.read_online``: the online read of every token (intra-chunk attention + chunk-start state)
  weights  pooled keys, router logits ``<u_t, pool(K_i)>`` and the softmax (``stages.pooled_keys`` / ``cached_constant``
           inlined)
  read     ``reads.dense_mix``: ``sum_i gamma[t, i] q_t^T S_i`` over the stack of cached states

and, for comparison, two read formulations that are *not* in ``mc_jax`` (candidates for the fix):

  read_gemm     the same sum as one long-contraction GEMM per query block: ``[c, m*dk] @ [m*dk, dv]`` with
                the query scaled by gamma (``gamma (x) q`` built in the block), instead of a ``[c, m*dv]`` read-out
                of every memory followed by a gamma-weighted reduction over ``m``;
  read_gemm_tri the same, visiting only the memories a query block can see (block-lower-triangular: skips the
                ``gamma = 0`` half).

Usage: ``python -m benchmarks.profile_linear_grm [--T 4096] [--C 64] [--repeats 5] [--out ...json]``
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

from benchmarks.bench_ops import dense_matmul_gflops, machine_info, make_inputs  # noqa: E402
from benchmarks.hlo_cost import HloCost, memory_bytes  # noqa: E402
from benchmarks.timing import jax_call  # noqa: E402
from benchmarks.timing import measure as timed_calls  # noqa: E402
from mc_jax.ops import aggregation as agg  # noqa: E402
from mc_jax.ops import memory_caching  # noqa: E402
from mc_jax.ops.aggregation import pool_keys  # noqa: E402
from mc_jax.ops.memories import complete_gates, get_memory, initial_state  # noqa: E402
from mc_jax.ops.reads import dense_mix  # noqa: E402
from mc_jax.ops.stages import READ_BUDGET, compress_independent, to_runs, xla_state_pass  # noqa: E402


def stages(b, t, h, dk, dv, size, chunk):
    spec = get_memory("linear")
    n = t // size

    def state(k, v, gates):
        valid = jnp.ones((b, t, h), bool)
        init = initial_state(spec, None, b, h, dk, dv)
        comp = compress_independent(spec, k, v, gates, valid, init, size=size, levels=1, chunk=chunk,
                                    state_pass=xla_state_pass)
        return comp.online, comp.finals[0]  # stack [b n h dk dv]

    def online(q, k, gates, data):
        gates_r = {name: to_runs(g, size) for name, g in gates.items()}
        return spec.family.read_online(to_runs(q, size), to_runs(k, size), gates_r, data, chunk).reshape(b, t, h, dv)

    def weights(k, u):  # the cached keys and weights stage, constant segmentation, grm
        block_of = jnp.arange(t) // size
        block_key_sum = k.reshape(b, n, size, h, dk).sum(2)
        block_count = jnp.clip(t - jnp.arange(n) * size, 0, size).astype(k.dtype)
        in_block = k.reshape(b, n, size, h, dk).cumsum(2).reshape(b, t, h, dk)
        online_pooled = pool_keys(in_block, (jnp.arange(t) % size + 1).astype(k.dtype)[None, :, None, None], "mean")
        cached_keys = pool_keys(block_key_sum, block_count[None, :, None, None], "mean")
        available = jnp.broadcast_to((jnp.arange(n)[None, :] < block_of[:, None])[None, :, None, :], (b, t, h, n))
        cached_logits = jnp.einsum("bthd,bnhd->bthn", u, cached_keys)
        online_logit = jnp.einsum("bthd,bthd->bth", u, online_pooled)
        return agg.weights("grm", cached_logits, online_logit, available, None)

    group_blocks = max(1, min(n, READ_BUDGET // max(1, size * n * dv)))
    while n % group_blocks:
        group_blocks -= 1
    block = size * group_blocks

    def read(stack, gamma, q):
        return dense_mix(spec, "read", stack, gamma, q, block)

    def read_gemm(stack, gamma, q):
        nb = t // block
        s = jnp.moveaxis(stack, 1, 2).reshape(b, h, n * dk, dv)  # b h (m k) v
        to_blocks = lambda a: jnp.moveaxis(a.reshape(b, nb, block, h, *a.shape[3:]), (1, 3), (0, 2))

        @jax.checkpoint
        def one(args):
            qb, gb = args  # b h c k, b h c m
            scaled = (gb[..., :, None] * qb[..., None, :]).reshape(b, h, block, n * dk)
            return jnp.einsum("bhcx,bhxv->bhcv", scaled, s)

        out = jax.lax.map(one, (to_blocks(q), to_blocks(gamma)))
        return jnp.moveaxis(out, (0, 2), (1, 3)).reshape(b, t, h, dv)

    def read_gemm_tri(stack, gamma, q):
        # query block j (of `block` tokens) sees memories [0, j * block / size); visit only those, in tiles of
        # `block / size` memories: a static list of (query block, memory tile) pairs on the lower triangle.
        nb, per = t // block, block // size
        s = jnp.moveaxis(stack, 1, 2).reshape(b, h, nb, per * dk, dv)  # b h tile (m k) v
        qb = jnp.moveaxis(q.reshape(b, nb, block, h, dk), 3, 2)  # b nb h c k
        gb = jnp.moveaxis(gamma.reshape(b, nb, block, h, nb, per), 3, 2)  # b nb h c tile m
        pairs = [(j, i) for j in range(nb) for i in range(j + 1)]  # tile i <= j (the diagonal tile is partly masked)
        qi = jnp.array([p[0] for p in pairs])
        mi = jnp.array([p[1] for p in pairs])

        @jax.checkpoint
        def one(args):
            j, i = args
            g = gb[:, j, :, :, i]  # b h c per
            x = (g[..., None] * qb[:, j][..., None, :]).reshape(b, h, block, per * dk)
            return jnp.einsum("bhcx,bhxv->bhcv", x, s[:, :, i])

        contrib = jax.lax.map(one, (qi, mi))  # pairs b h c v
        out = jax.ops.segment_sum(contrib, qi, num_segments=nb)  # nb b h c v
        return jnp.moveaxis(out, (0, 2), (1, 3)).reshape(b, t, h, dv)

    return dict(state=state, online=online, weights=weights, read=read, read_gemm=read_gemm,
                read_gemm_tri=read_gemm_tri), block


def grad_of(fn, n_args):
    """Forward + backward of ``fn``: gradient of ``sum(out * ct)`` w.r.t. its first ``n_args`` float args."""

    def loss(*args):
        *xs, ct = args
        out = fn(*xs)
        return sum(jnp.vdot(o, c) for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(ct)))

    return jax.value_and_grad(loss, argnums=tuple(range(n_args)))


def measure(fn, args, repeats):
    compiled = jax.jit(fn).lower(*args).compile()
    cost = HloCost(compiled.as_text()).cost()
    timed = timed_calls(jax_call(compiled, *args), repeats)
    times, med = timed["times_s"], timed["median_s"]
    return {"median_s": med, "times_s": times, "flops": cost.flops, "dot_flops": cost.dot_flops,
            "gflops": cost.flops / med / 1e9, "memory": memory_bytes(compiled)}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--C", type=int, default=64)
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-backward", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "profile_linear_grm.json")
    a = p.parse_args(argv)
    b, t, h, d, size = a.B, a.T, a.H, a.D, a.C
    chunk = min(64, size)
    x = make_inputs("linear", b, t, h, d, d)
    q, k, v, u = x["q"], x["k"], x["v"], x["u"]
    gates = complete_gates(get_memory("linear"), {}, (b, t, h))
    fns, block = stages(b, t, h, d, d, size, chunk)

    # intermediate values, to feed each stage its real inputs
    data, stack = jax.jit(fns["state"])(k, v, gates)
    gamma, gamma_on = jax.jit(fns["weights"])(k, u)
    y_on = jax.jit(fns["online"])(q, k, gates, data)
    full = jax.jit(lambda q, k, v, u: memory_caching(q, k, v, u=u, memory="linear", aggregation="grm",
                                                     segment_size=size))
    y_full = full(q, k, v, u)
    y_parts = gamma_on[..., None] * y_on + jax.jit(fns["read"])(stack, gamma, q)
    consistency = float(jnp.max(jnp.abs(y_parts - y_full)) / jnp.max(jnp.abs(y_full)))
    ref = jax.jit(fns["read"])(stack, gamma, q)
    alt_err = {name: float(jnp.max(jnp.abs(jax.jit(fns[name])(stack, gamma, q) - ref)) / jnp.max(jnp.abs(ref)))
               for name in ("read_gemm", "read_gemm_tri")}

    ct = lambda out: jax.tree.map(lambda o: jnp.ones_like(o) * 0.01, out)
    cases = {
        "full": (lambda q, k, v, u: memory_caching(q, k, v, u=u, memory="linear", aggregation="grm",
                                                   segment_size=size), (q, k, v, u), 4),
        "state": (fns["state"], (k, v), 2),
        "online": (lambda q, k, data: fns["online"](q, k, gates, data), (q, k, data), 3),
        "weights": (fns["weights"], (k, u), 2),
        "read": (fns["read"], (stack, gamma, q), 3),
        "read_gemm": (fns["read_gemm"], (stack, gamma, q), 3),
        "read_gemm_tri": (fns["read_gemm_tri"], (stack, gamma, q), 3),
    }
    cases["state"] = (lambda k, v: fns["state"](k, v, gates), (k, v), 2)
    dense = dense_matmul_gflops()
    results = {"machine": machine_info(), "dense_matmul": dense,
               "shape": dict(B=b, T=t, H=h, Dk=d, Dv=d, C=size, chunk=chunk, read_block_tokens=block),
               "consistency_rel_error": consistency, "alternative_read_rel_error": alt_err, "stages": {}}
    print(f"# linear+grm B={b} T={t} H={h} D={d} C={size} chunk={chunk} read block={block} tokens; "
          f"dense {dense['gflops']:.1f} GFLOP/s; stages sum vs op rel err {consistency:.1e}; alt reads {alt_err}")
    print(f"{'stage':>14} {'fwd ms':>9} {'fwd GFLOP':>10} {'fwd GF/s':>9} {'%mm':>6} {'f+b ms':>9} {'f+b GFLOP':>10} "
          f"{'f+b GF/s':>9} {'%mm':>6} {'f+b MiB':>8}")
    for name, (fn, args, n_args) in cases.items():
        r = {"forward": measure(fn, args, a.repeats)}
        if not a.skip_backward:
            out = jax.eval_shape(fn, *args)
            r["fwd_bwd"] = measure(grad_of(fn, n_args), args + (ct(out),), a.repeats)
        results["stages"][name] = r
        f, fb = r["forward"], r.get("fwd_bwd", {})
        cell = lambda p, key, scale, spec: "-" if key not in p else format(p[key] * scale, spec)
        pct = lambda p: "-" if "gflops" not in p else f"{100 * p['gflops'] / dense['gflops']:.0f}"
        mib = "-" if not fb.get("memory") else f"{fb['memory']['peak_bytes'] / 2**20:.0f}"
        print(f"{name:>14} {cell(f, 'median_s', 1e3, '9.1f')} {cell(f, 'flops', 1e-9, '10.2f')} "
              f"{cell(f, 'gflops', 1, '9.1f')} {pct(f):>6} {cell(fb, 'median_s', 1e3, '9.1f')} "
              f"{cell(fb, 'flops', 1e-9, '10.2f')} {cell(fb, 'gflops', 1, '9.1f')} {pct(fb):>6} {mib:>8}", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1, default=float))
    print(f"# wrote {a.out}")


if __name__ == "__main__":
    main()
