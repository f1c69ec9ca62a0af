"""The benchmark grid of issue 15 (item 5): every memory x aggregation x segmentation x init, the base memory alone,
``jax.nn.dot_product_attention``, growth exponents, and model-level training tokens/s (MC vs Transformer++).

    python -m benchmarks.bench_grid            # the full grid (T in 1K, 4K, 16K; budgeted, see --budget-s)
    python -m benchmarks.bench_grid --quick    # smoke run (~2-4 min): tiny shapes, one repeat

Per op row (``memory_caching(impl="auto")`` under ``jit``, B=1 H=4 D=64 by default, float32, loss ``sum(y * ct)``,
gradients of q, k, v, u, every gate and the initial memory): forward and forward+backward median ms after one
warm-up, training tokens/s (``B * T / fwd+bwd``), and the compiled forward+backward's memory
(``memory_analysis()``: arguments + outputs + temporaries, ``peak_mib``). Rows the budget cannot cover are listed as
*skipped* with the reason, never silently dropped: deep memories above ``--deep-max-length`` (default 4096: titans
+ grm at 16K takes about a minute per call on 2 cores) and everything after ``--budget-s`` seconds. Growth exponents
are the log-log slope of forward+backward time over the last two lengths of a row (and of peak memory).

Baselines at the same shapes: ``base`` -- the memory alone (one segment of ``T`` tokens: no cached memory read;
:func:`mc_jax.ops.memory_caching` caps the segment at ``T``) and ``attention`` -- causal
``jax.nn.dot_product_attention``. The dense-matmul rate of the run (f32 2048^3) is printed for scale.

Model rows: one jitted training step (:func:`mc_jax.train.step.make_train_step`, AdamW) of the ``tiny`` and ``small``
presets (``mc_jax/configs``) and of the same model with ``mixer.kind=attention`` (Transformer++), B=1, at context 1K
and 4K: tokens/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_ops import machine_info  # noqa: E402
from benchmarks.hlo_cost import memory_bytes  # noqa: E402
from benchmarks.timing import median_ms  # noqa: E402
from mc_jax.ops import memory_caching  # noqa: E402
from mc_jax.ops.memories import get_memory  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_grid.json"
MEMORIES = ("linear", "gated_linear", "delta", "swla", "dla", "titans")
AGGREGATIONS = ("residual", "grm", "soup", "ssc")
LAYOUTS = (("constant", "independent"), ("constant", "checkpoint"), ("log", "independent"), ("log", "checkpoint"))
GATE_VALUES = {"log_decay": -0.05, "beta": 0.5, "beta_prev": 0.5, "lam": 0.5, "theta": 0.05, "alpha": 0.01,
               "eta": 0.9}


def op_inputs(memory: str, b: int, t: int, h: int, d: int, seed: int = 0) -> dict:
    """Unit-norm q, k; normal v, u; constant gates in their ranges; deep memories' initial MLP (width 2d)."""
    keys = jax.random.split(jax.random.key(seed), 6)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    spec = get_memory(memory)
    out = dict(q=unit(jax.random.normal(keys[0], (b, t, h, d))), k=unit(jax.random.normal(keys[1], (b, t, h, d))),
               v=jax.random.normal(keys[2], (b, t, h, d)), u=jax.random.normal(keys[3], (b, t, h, d)),
               gates={n: jnp.full((b, t, h), GATE_VALUES[n]) for n in spec.gate_names})
    if spec.family.deep:
        out["params"] = {"W1": 0.1 * jax.random.normal(keys[4], (h, d, 2 * d)),
                         "W2": 0.1 * jax.random.normal(keys[5], (h, 2 * d, d))}
    return out


def time_op(op, inputs: dict, repeats: int) -> dict:
    """``op(**inputs) -> y``: forward and forward+backward ms, tokens/s and the f+b compile's memory."""
    ct = jax.random.normal(jax.random.key(9), inputs["v"].shape)
    fwd = jax.jit(lambda a: op(**a))
    fwd_bwd = jax.jit(jax.value_and_grad(lambda a: jnp.sum(op(**a) * ct)))
    compiled = fwd_bwd.lower(inputs).compile()
    mem = memory_bytes(compiled) or {}
    row = dict(fwd_ms=median_ms(fwd, inputs, repeats=repeats), fwd_bwd_ms=median_ms(compiled, inputs, repeats=repeats),
               peak_mib=mem.get("peak_bytes", 0) / 2**20, temp_mib=mem.get("temp_bytes", 0) / 2**20)
    b, t = inputs["q"].shape[:2]
    row["tokens_per_s"] = 1e3 * b * t / row["fwd_bwd_ms"]
    return row


def mc_op(memory, aggregation, segmentation, init, size, top_k):
    def op(q, k, v, u, gates, params=None):
        return memory_caching(q, k, v, u=None if aggregation == "residual" else u, gates=gates, params=params,
                              memory=memory, aggregation=aggregation, segmentation=segmentation, init=init,
                              segment_size=size, top_k=top_k if aggregation == "ssc" else None, impl="auto")
    return op


def attention_op(q, k, v, u=None, gates=None, params=None):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)


def dense_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / (1e-3 * median_ms(f, a, repeats=repeats)) / 1e9


def op_configs(args) -> list[dict]:
    rows = []
    for t in args.lengths:
        for memory in args.memories:
            rows.append(dict(kind="base", memory=memory, T=t))
            for aggregation in args.aggregations:
                for segmentation, init in args.layouts:
                    rows.append(dict(kind="mc", memory=memory, aggregation=aggregation, segmentation=segmentation,
                                     init=init, T=t))
        rows.append(dict(kind="attention", T=t))
    return rows


def skip_reason(cfg: dict, args, started: float) -> str | None:
    if cfg["kind"] == "attention" and cfg["T"] > args.attention_max_length:
        scores_gib = cfg["B"] * cfg["H"] * cfg["T"] ** 2 * 4 / 2**30
        return (f"attention above --attention-max-length {args.attention_max_length}: its [B, H, T, T] float32 "
                f"scores alone are {scores_gib:.1f} GiB (the 2-core CPU's process was killed at T=16384)")
    if cfg.get("memory") and get_memory(cfg["memory"]).family.deep and cfg["T"] > args.deep_max_length:
        return f"deep memory above --deep-max-length {args.deep_max_length}"
    if time.perf_counter() - started > args.budget_s:
        return f"past the --budget-s {args.budget_s:.0f} s budget"
    return None


def run_ops(args, started: float) -> tuple[list[dict], list[dict]]:
    rows, skipped = [], []
    b, h, d, size = args.batch, args.heads, args.dim, args.segment_size
    for cfg in op_configs(args):
        cfg = dict(cfg, B=b, H=h, D=d, C=size)
        reason = skip_reason(cfg, args, started)
        if reason:
            skipped.append(dict(cfg, reason=reason))
            continue
        inputs = op_inputs(cfg.get("memory", "linear"), b, cfg["T"], h, d)
        if cfg["kind"] == "attention":
            op = attention_op
        elif cfg["kind"] == "base":
            op = mc_op(cfg["memory"], "residual", "constant", "independent", cfg["T"], None)
        else:
            op = mc_op(cfg["memory"], cfg["aggregation"], cfg["segmentation"], cfg["init"], size, args.top_k)
        try:
            cfg.update(time_op(op, inputs, args.repeats))
        except Exception as err:  # noqa: BLE001 - a failing row is reported, the grid goes on
            skipped.append(dict(cfg, reason=f"failed: {type(err).__name__}: {str(err)[:200]}"))
            continue
        rows.append(cfg)
        print("ROW " + json.dumps(cfg), flush=True)
    return rows, skipped


def row_key(r: dict) -> tuple:
    return (r["kind"], r.get("memory", ""), r.get("aggregation", ""), r.get("segmentation", ""), r.get("init", ""))


def exponent(points: list[tuple[int, float]]) -> float | None:
    """Log-log slope over the last two points."""
    pts = sorted(points)
    if len(pts) < 2 or pts[-2][1] <= 0 or pts[-1][1] <= 0:
        return None
    (x0, y0), (x1, y1) = pts[-2], pts[-1]
    return math.log(y1 / y0) / math.log(x1 / x0)


def growth(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(row_key(r), []).append(r)
    out = []
    for key, rs in groups.items():
        out.append(dict(zip(("kind", "memory", "aggregation", "segmentation", "init"), key),
                        lengths=sorted(r["T"] for r in rs),
                        time_exponent=exponent([(r["T"], r["fwd_bwd_ms"]) for r in rs]),
                        memory_exponent=exponent([(r["T"], r["peak_mib"]) for r in rs])))
    return out


# --- model-level rows ---------------------------------------------------------------------------------------------
def model_row(preset: str, mixer_kind: str, context: int, batch: int, repeats: int) -> dict:
    import optax

    from mc_jax.configs_util import load_preset
    from mc_jax.models.lm import create_model
    from mc_jax.train.step import make_train_step, split_model

    config = load_preset(preset)
    if mixer_kind != "mc":
        config = dataclasses.replace(config, mixer=dataclasses.replace(config.mixer, kind=mixer_kind))
    graphdef, params, rest = split_model(create_model(config))
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)
    step = make_train_step(graphdef, rest, tx, 1)
    tokens = jax.random.randint(jax.random.key(0), (1, batch, context + 1), 0, config.vocab_size)
    batch_ = {"inputs": tokens[..., :-1], "labels": tokens[..., 1:]}
    ms = median_ms(lambda p, o, bt: step(p, o, bt)[2]["loss"], params, opt_state, batch_, repeats=repeats)
    return dict(kind="model", preset=preset, mixer=mixer_kind, context=context, B=batch, step_ms=ms,
                tokens_per_s=1e3 * batch * context / ms)


def run_models(args, started: float) -> tuple[list[dict], list[dict]]:
    rows, skipped = [], []
    for preset in args.presets:
        for context in args.model_contexts:
            for mixer_kind in ("mc", "attention"):
                cfg = dict(kind="model", preset=preset, mixer=mixer_kind, context=context)
                if time.perf_counter() - started > args.model_budget_s:
                    skipped.append(dict(cfg, reason=f"past the --model-budget-s {args.model_budget_s:.0f} s budget"))
                    continue
                try:
                    row = model_row(preset, mixer_kind, context, args.model_batch, args.repeats)
                except Exception as err:  # noqa: BLE001
                    skipped.append(dict(cfg, reason=f"failed: {type(err).__name__}: {str(err)[:200]}"))
                    continue
                rows.append(row)
                print("ROW " + json.dumps(row), flush=True)
    return rows, skipped


# --- printing -----------------------------------------------------------------------------------------------------
def print_tables(rows, models, grow, skipped, dense) -> None:
    print(f"\ndense matmul (f32 2048^3) in this run: {dense:.1f} GFLOP/s")
    print("\n| kind | memory | agg | seg | init | T | fwd ms | f+b ms | tokens/s | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r.get('memory', '-')} | {r.get('aggregation', '-')} | {r.get('segmentation', '-')} "
              f"| {r.get('init', '-')} | {r['T']} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} "
              f"| {r['tokens_per_s']:.0f} | {r['peak_mib']:.0f} |")
    fmt = lambda x: "-" if x is None else f"{x:.2f}"
    print("\ngrowth exponents (last two lengths; forward+backward time and peak memory):")
    print("| kind | memory | agg | seg | init | lengths | time | memory |")
    print("|---|---|---|---|---|---|---|---|")
    for g in grow:
        print(f"| {g['kind']} | {g['memory'] or '-'} | {g['aggregation'] or '-'} | {g['segmentation'] or '-'} "
              f"| {g['init'] or '-'} | {','.join(map(str, g['lengths']))} | {fmt(g['time_exponent'])} "
              f"| {fmt(g['memory_exponent'])} |")
    if models:
        print("\n| preset | mixer | context | step ms | training tokens/s |")
        print("|---|---|---|---|---|")
        for m in models:
            print(f"| {m['preset']} | {m['mixer']} | {m['context']} | {m['step_ms']:.1f} | {m['tokens_per_s']:.0f} |")
    if skipped:
        reasons: dict[str, int] = {}
        for s in skipped:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        print(f"\nskipped {len(skipped)} rows (listed in the JSON under 'skipped'):")
        for reason, count in reasons.items():
            print(f"  {count} x {reason}")


def _layout(text: str) -> tuple[str, str]:
    """``constant/independent`` -> ``("constant", "independent")``, one of :data:`LAYOUTS`."""
    layout = tuple(text.split("/"))
    if layout not in LAYOUTS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {['/'.join(x) for x in LAYOUTS]}")
    return layout


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384])
    p.add_argument("--memories", nargs="+", default=list(MEMORIES), choices=MEMORIES)
    p.add_argument("--aggregations", nargs="+", default=list(AGGREGATIONS), choices=AGGREGATIONS)
    p.add_argument("--layouts", nargs="+", type=_layout, default=list(LAYOUTS), metavar="SEGMENTATION/INIT",
                   help="segmentation / init pairs of the MC rows (default: all four)")
    p.add_argument("--segment-size", type=int, default=64)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--deep-max-length", type=int, default=4096, help="deep memories are cut above this length")
    p.add_argument("--attention-max-length", type=int, default=8192,
                   help="causal attention rows are cut above this length (their T x T scores)")
    p.add_argument("--budget-s", type=float, default=3600.0, help="op rows after this many seconds are skipped")
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--model-contexts", nargs="+", type=int, default=[1024, 4096])
    p.add_argument("--model-batch", type=int, default=1)
    p.add_argument("--model-budget-s", type=float, default=1200.0, help="model rows after this many seconds of them "
                   "are skipped")
    p.add_argument("--quick", action="store_true", help="smoke run: T 256 512, C 32, two memories, tiny preset")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.segment_size, args.repeats = [256, 512], 32, 1
        args.memories, args.aggregations = ["linear", "titans"], ["residual", "grm", "ssc"]
        args.deep_max_length, args.presets, args.model_contexts = 256, ["tiny"], [256]
        args.budget_s, args.model_budget_s = min(args.budget_s, 300.0), 120.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    dense = dense_matmul_gflops()
    rows, skipped = run_ops(args, started)
    models, model_skipped = run_models(args, time.perf_counter())  # the model rows have a budget of their own
    grow = growth(rows)
    print_tables(rows, models, grow, skipped + model_skipped, dense)
    result = dict(command=" ".join(sys.argv), machine=machine_info(), settings=vars(args) | {"out": str(args.out)},
                  dense_matmul_gflops=dense, rows=rows, growth=grow, models=models, skipped=skipped + model_skipped,
                  wall_s=time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
