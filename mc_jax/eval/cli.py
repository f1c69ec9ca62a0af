"""``mc-eval`` / ``python eval.py CHECKPOINT [--step N] [--text FILE] [--mqar] [--niah] [--generate PROMPT] [k=v]``

CHECKPOINT is a run directory written by ``train.py`` (``runs/tiny_mqar/main``), its ``checkpoints`` directory or
one step directory. The model is rebuilt from the config stored in the checkpoint. With ``--preset`` and/or
``model.*`` overrides, the requested model config must equal the stored one, otherwise the checkpoint is refused.

With no evaluation flag, the run's own task is evaluated (MQAR accuracy, NIAH grid or text perplexity) with a short
demo (MQAR answers, a NIAH answer, or generated text). A stacked-MQAR run (``model.inputs=pair_table``) reports its
accuracy by the context position of the queried pair too. ``--text`` scores the held-out split (the trailing
``train.task.val_fraction`` of the file, what a run trained on it never saw) unless ``--split train|all``.

Each call writes its own directory ``<run>/eval/<UTC time>-step<N>/`` (``--out`` to choose the parent; earlier
results are never overwritten): ``results.json``, and for NIAH ``niah.md``, ``niah.csv`` and ``niah.png``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

from mc_jax.cli_common import (
    add_overrides,
    non_negative_float,
    non_negative_int,
    parse_args,
    positive_int,
    quiet_logs,
)
from mc_jax.data import MQARConfig, NIAHConfig, StackedMQARConfig
from mc_jax.eval.load import load_checkpoint
from mc_jax.eval.metrics import (
    TEXT_SPLITS,
    EvalError,
    generate_text,
    mqar_accuracy,
    mqar_demo,
    niah_csv,
    niah_demo,
    niah_grid,
    niah_table,
    stacked_mqar_accuracy,
    stacked_mqar_demo,
    text_perplexity,
)
from mc_jax.files import unwritable_reason, write_json_atomic, write_text_atomic
from mc_jax.plots import plot_niah_heatmaps
from mc_jax.train.checkpoint import CheckpointError
from mc_jax.train.config import RECALL_TASKS, describe_model, load_run_config


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive lengths, got {text!r}")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected depths in [0, 1], got {text!r}")
    return values


def _top_p(text: str) -> float:
    value = non_negative_float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run directory, checkpoints directory or step directory written by train.py")
    add_overrides(p, "model.* overrides the checkpoint must match (refused otherwise)")
    p.add_argument("--step", type=non_negative_int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--preset", default=None, help="a preset the checkpoint's model config must match")
    p.add_argument("--text", default=None, help="perplexity on this text file (the run's tokenizer)")
    p.add_argument("--split", choices=TEXT_SPLITS, default="val",
                   help="--text: the held-out trailing train.task.val_fraction (val, default), the rest (train) or "
                        "the whole file (all)")
    p.add_argument("--max-tokens", type=positive_int, default=None, help="--text: score at most this many tokens")
    p.add_argument("--seq-len", type=positive_int, default=None, help="window length for --text (default: the run's)")
    p.add_argument("--mqar", action="store_true",
                   help="MQAR accuracy (stacked MQAR for a pair-table model; "
                        "the run's task settings unless overridden)")
    p.add_argument("--mqar-kv", type=positive_int, default=None, help="key-value pairs per sequence")
    p.add_argument("--mqar-len", type=positive_int, default=None, help="token MQAR sequence length (stacked: 2 x kv)")
    p.add_argument("--examples", type=positive_int, default=None,
                   help="MQAR examples (default: the run's eval_examples)")
    p.add_argument("--niah", action="store_true", help="NIAH exact match over a depth x length grid")
    p.add_argument("--niah-lengths", type=_ints, default=None,
                   help="comma-separated lengths (default: 1x,2x,4x train length)")
    p.add_argument("--niah-depths", type=_floats, default=_floats("0,0.25,0.5,0.75,1"),
                   help="comma-separated depths in [0, 1]")
    p.add_argument("--niah-samples", type=positive_int, default=32)
    p.add_argument("--niah-decode", action="store_true", help="score NIAH with real greedy decoding (slower)")
    p.add_argument("--generate", default=None, metavar="PROMPT", help="generation demo from this prompt")
    p.add_argument("--max-new-tokens", type=positive_int, default=48)
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=_top_p, default=1.0, help="nucleus sampling mass (with --temperature > 0)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling PRNG seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on long evaluations")
    p.add_argument("--out", default=None, help="parent of this call's results directory (default: <run>/eval)")
    return p


def results_dir(parent: Path, step: int) -> Path:
    """A new directory ``<parent>/<UTC time>-step<N>`` (``-2``, ``-3``, ... when a call in the same second made one):
    every call keeps its own results."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        out = parent / f"{stamp}-step{step}{'' if n == 1 else f'-{n}'}"
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise EvalError(f"cannot create a new results directory under {parent}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    quiet_logs()
    try:
        expect = None
        if args.preset or args.overrides:
            bad = [o for o in args.overrides if not o.strip().startswith("model.")]
            if bad:
                raise EvalError(f"only model.* overrides are accepted (they are checked against the checkpoint); "
                                f"got {bad}")
            expect = load_run_config(args.preset, args.overrides)
        run = load_checkpoint(args.checkpoint, step=args.step, expect=expect)
        out_dir = Path(args.out) if args.out else run.run_dir / "eval"
        reason = unwritable_reason(out_dir)  # before any evaluation is computed
        if reason is not None:
            raise EvalError(f"cannot write the results to {out_dir} ({reason}); pass --out DIR to write them "
                            "to a writable directory")
        return _evaluate(run, args)
    except (CheckpointError, EvalError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _evaluate(run, args) -> int:
    task = run.config.train.task
    given = Path(args.checkpoint)
    root = given if given.absolute() == run.run_dir else run.run_dir  # paths printed as the user wrote them
    parent = Path(args.out) if args.out else root / "eval"
    made: list[Path] = []

    def out(name: str) -> Path:  # this call's results directory, created when the first file is written
        if not made:
            made.append(results_dir(parent, run.step))
        return made[0] / name

    progress = not args.no_progress
    chosen = args.text or args.mqar or args.niah or args.generate is not None
    do_mqar = args.mqar or (not chosen and task.kind in RECALL_TASKS)
    do_niah = args.niah or (not chosen and task.kind == "niah")
    do_text = args.text is not None or (not chosen and task.kind == "text")
    print(f"checkpoint {root} step {run.step}: {describe_model(run.config.model)} "
          f"({run.pure.num_params(run.state):,} params)")
    results: dict = {"checkpoint": str(run.run_dir), "step": run.step}
    if do_mqar and run.config.model.inputs == "pair_table":
        _stacked(run, args, task, results, demo=not chosen)
    elif do_mqar:
        kind_ok = task.kind == "mqar"
        cfg = MQARConfig(vocab_size=task.vocab_size if kind_ok else min(run.config.model.vocab_size, 8192),
                         seq_len=args.mqar_len or (task.seq_len if kind_ok else 64),
                         num_kv_pairs=args.mqar_kv or (task.num_kv_pairs if kind_ok else 4),
                         power_a=task.power_a, random_non_queries=task.random_non_queries)
        n = args.examples or task.eval_examples
        r = mqar_accuracy(run.pure, run.state, cfg, num_examples=n, seed=task.eval_seed, progress=not args.no_progress)
        results["mqar"] = {**r, "seq_len": cfg.seq_len, "num_kv_pairs": cfg.num_kv_pairs}
        print(f"MQAR (L={cfg.seq_len}, kv={cfg.num_kv_pairs}, V={cfg.vocab_size}, {n} sequences): "
              f"accuracy {r['accuracy']:.2%}, all queries right {r['exact_match']:.2%}, loss {r['loss']:.4f}")
        if not chosen:
            print(mqar_demo(run.pure, run.state, cfg))
    if do_text:
        path = args.text or task.path or None
        r = text_perplexity(run.pure, run.state, path, seq_len=args.seq_len or task.seq_len, split=args.split,
                            max_tokens=args.max_tokens, val_fraction=task.val_fraction, tokenizer=run.tokenizer,
                            progress=progress)
        where = path or "the tiny corpus"
        results["text"] = {**r, "path": str(where)}
        print(f"text {where} ({args.split} split): {int(r['tokens'])} tokens, loss {r['loss']:.4f} nats/token, "
              f"perplexity {r['perplexity']:.3f}, {r['bits_per_byte']:.3f} bits/byte")
    if do_niah:
        base = NIAHConfig(needle=task.needle, haystack=task.haystack, template=task.template,
                          seq_len=task.seq_len if task.kind == "niah" else 256)
        lengths = args.niah_lengths or [base.seq_len * m for m in (1, 2, 4)]
        depths = args.niah_depths
        grid = niah_grid(run.pure, run.state, base, lengths, depths, samples=args.niah_samples,
                         seed=task.eval_seed, decode=args.niah_decode, progress=progress)
        table = niah_table(grid)
        write_text_atomic(out("niah.md"), table + "\n")
        write_text_atomic(out("niah.csv"), niah_csv(grid))
        png = plot_niah_heatmaps(grid, out("niah.png"), model=describe_model(run.config.model), step=run.step,
                                 task=f"{base.needle}/{base.haystack}")
        results["niah"] = {"lengths": grid["lengths"], "depths": grid["depths"], "exact": grid["exact"].tolist(),
                           "char_accuracy": grid["char_accuracy"].tolist(), "samples": grid["samples"],
                           "heatmap": str(png) if png else None}
        print(f"NIAH {base.needle}/{base.haystack}, exact match / per-character accuracy (%), "
              f"{args.niah_samples} samples per cell:")
        print(table)
        files = [out("niah.md"), out("niah.csv")] + ([png] if png else [])
        note = "" if png else " (no heatmap: matplotlib is not installed; pip install 'mc_jax[plots]')"
        print(f"wrote {', '.join(str(f) for f in files)}{note}")
    if not chosen and task.kind == "niah":
        demo = niah_demo(run.pure, run.state, task.niah_config(), seed=task.eval_seed)
        results["demo"] = demo
        print(f"demo: ...{demo['prompt_tail']!r} -> generated {demo['generated']!r} (true {demo['answer']!r})")
    if args.generate is not None or (not chosen and task.kind == "text"):
        prompt = args.generate if args.generate is not None else "The "
        text = generate_text(run.pure, run.state, prompt, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_p=args.top_p, seed=args.seed, tokenizer=run.tokenizer)
        results["generation"] = {"prompt": prompt, "output": text, "temperature": args.temperature,
                                 "top_p": args.top_p, "seed": args.seed}
        how = "greedy" if args.temperature == 0 else f"temperature {args.temperature}, top-p {args.top_p}, " \
                                                     f"seed {args.seed}"
        print(f"generation ({how}, {args.max_new_tokens} new tokens):")
        print(f"{prompt}{text}")
    write_json_atomic(out("results.json"), _plain(results))
    print(f"results: {out('results.json')}")
    return 0


def _stacked(run, args, task, results: dict, *, demo: bool) -> None:
    """Stacked-MQAR accuracy (overall and per segment of context positions) of a pair-table model."""
    model = run.config.model
    if args.mqar_len is not None:
        raise EvalError("--mqar-len does not apply to stacked MQAR (its length is 2 x pairs): use --mqar-kv")
    kv = args.mqar_kv or (task.num_kv_pairs if task.kind == "stacked_mqar" else 32)
    try:
        cfg = StackedMQARConfig(num_kv_pairs=kv, num_keys=model.num_keys, num_values=model.vocab_size)
    except ValueError as err:
        raise EvalError(f"stacked MQAR with --mqar-kv {kv}: {err}") from None
    bucket = model.mixer.segment_size
    n = args.examples or task.eval_examples
    r = stacked_mqar_accuracy(run.pure, run.state, cfg, num_examples=n, seed=task.eval_seed, bucket=bucket,
                              progress=not args.no_progress)
    results["stacked_mqar"] = {**r, "num_kv_pairs": kv, "seq_len": cfg.seq_len}
    print(f"stacked MQAR (kv={kv}, L={cfg.seq_len}, {cfg.num_keys} keys x {cfg.num_values} values, {n} sequences): "
          f"accuracy {r['accuracy']:.2%}, all queries right {r['exact_match']:.2%}, loss {r['loss']:.4f}")
    print(f"accuracy by the position of the queried pair in the context ({bucket} positions per bucket):")
    print("  " + "  ".join(f"{b['positions'][0]}-{b['positions'][1]}: {b['accuracy']:.1%}" for b in r["by_position"]))
    if demo:
        print(stacked_mqar_demo(run.pure, run.state, cfg))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None  # strict JSON: null for NaN / inf
    return x


__all__ = ["build_parser", "main"]
