"""``python eval.py CHECKPOINT [--step N] [--text FILE] [--mqar] [--niah] [--generate PROMPT] [key=value ...]``

CHECKPOINT is a run directory written by ``train.py`` (``runs/tiny_mqar/main``), its ``checkpoints`` directory or
one step directory. The model is rebuilt from the config stored in the checkpoint. With ``--preset`` and/or
``model.*`` overrides, the requested model config must equal the stored one, otherwise the checkpoint is refused.

With no evaluation flag, the run's own task is evaluated (MQAR accuracy, NIAH grid or text perplexity) with a short
demo (MQAR answers, a NIAH answer, or generated text). A stacked-MQAR run (``model.inputs=pair_table``) reports its
accuracy by the context position of the queried pair too. Results go to ``<run>/eval/`` (``--out`` to change): ``results.json``, and for NIAH
``niah.md``, ``niah.csv`` and ``niah.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mc_jax.data import MQARConfig, NIAHConfig, StackedMQARConfig
from mc_jax.eval.load import load_checkpoint
from mc_jax.eval.metrics import (
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
from mc_jax.eval.png import heatmap_png
from mc_jax.files import unwritable_reason, write_json_atomic, write_text_atomic
from mc_jax.train.checkpoint import CheckpointError
from mc_jax.train.cli import quiet_logs
from mc_jax.train.config import RECALL_TASKS, describe_model, load_run_config


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval.py", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run directory, checkpoints directory or step directory written by train.py")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="model.* overrides the checkpoint must match (refused otherwise)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--preset", default=None, help="a preset the checkpoint's model config must match")
    p.add_argument("--text", default=None, help="perplexity on this text file (byte tokens)")
    p.add_argument("--seq-len", type=int, default=None, help="window length for --text (default: the run's)")
    p.add_argument("--mqar", action="store_true",
                   help="MQAR accuracy (stacked MQAR for a pair-table model; the run's task settings unless overridden)")
    p.add_argument("--mqar-kv", type=int, default=None, help="key-value pairs per sequence")
    p.add_argument("--mqar-len", type=int, default=None, help="token MQAR sequence length (stacked: 2 x kv)")
    p.add_argument("--examples", type=int, default=None, help="MQAR examples (default: the run's eval_examples)")
    p.add_argument("--niah", action="store_true", help="NIAH exact match over a depth x length grid")
    p.add_argument("--niah-lengths", default=None, help="comma-separated lengths (default: 1x,2x,4x train length)")
    p.add_argument("--niah-depths", default="0,0.25,0.5,0.75,1", help="comma-separated depths in [0, 1]")
    p.add_argument("--niah-samples", type=int, default=32)
    p.add_argument("--niah-decode", action="store_true", help="score NIAH with real greedy decoding (slower)")
    p.add_argument("--generate", default=None, metavar="PROMPT", help="generation demo from this prompt")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--out", default=None, help="output directory (default: <run>/eval)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    out_dir = Path(args.out) if args.out else run.run_dir / "eval"
    chosen = args.text or args.mqar or args.niah or args.generate is not None
    do_mqar = args.mqar or (not chosen and task.kind in RECALL_TASKS)
    do_niah = args.niah or (not chosen and task.kind == "niah")
    do_text = args.text is not None or (not chosen and task.kind == "text")
    print(f"checkpoint {run.run_dir} step {run.step}: {describe_model(run.config.model)} "
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
        r = mqar_accuracy(run.pure, run.state, cfg, num_examples=n, seed=task.eval_seed)
        results["mqar"] = {**r, "seq_len": cfg.seq_len, "num_kv_pairs": cfg.num_kv_pairs}
        print(f"MQAR (L={cfg.seq_len}, kv={cfg.num_kv_pairs}, V={cfg.vocab_size}, {n} sequences): "
              f"accuracy {r['accuracy']:.2%}, all queries right {r['exact_match']:.2%}, loss {r['loss']:.4f}")
        if not chosen:
            print(mqar_demo(run.pure, run.state, cfg))
    if do_text:
        path = args.text or task.path
        if not path:
            from mc_jax.data.text import TINY_CORPUS_FILE

            path = str(Path(__file__).resolve().parents[1] / "data" / TINY_CORPUS_FILE)
        r = text_perplexity(run.pure, run.state, path, seq_len=args.seq_len or task.seq_len)
        results["text"] = {**r, "path": str(path)}
        print(f"text {path}: {int(r['tokens'])} tokens, loss {r['loss']:.4f} nats/byte, perplexity "
              f"{r['perplexity']:.3f}, {r['bits_per_byte']:.3f} bits/byte")
    if do_niah:
        base = NIAHConfig(needle=task.needle, haystack=task.haystack, template=task.template,
                          seq_len=task.seq_len if task.kind == "niah" else 256)
        lengths = _ints(args.niah_lengths) if args.niah_lengths else [base.seq_len * m for m in (1, 2, 4)]
        depths = _floats(args.niah_depths)
        grid = niah_grid(run.pure, run.state, base, lengths, depths, samples=args.niah_samples,
                         seed=task.eval_seed, decode=args.niah_decode)
        out_dir.mkdir(parents=True, exist_ok=True)
        table = niah_table(grid)
        write_text_atomic(out_dir / "niah.md", table + "\n")
        write_text_atomic(out_dir / "niah.csv", niah_csv(grid))
        renderer = heatmap_png(out_dir / "niah.png", grid["exact"], [f"{d:.2f}" for d in depths],
                               [str(L) for L in lengths], title="NIAH exact match", xlabel="length",
                               ylabel="depth")
        results["niah"] = {"lengths": grid["lengths"], "depths": grid["depths"], "exact": grid["exact"].tolist(),
                           "char_accuracy": grid["char_accuracy"].tolist(), "samples": grid["samples"],
                           "heatmap": str(out_dir / "niah.png"), "renderer": renderer}
        print(f"NIAH {base.needle}/{base.haystack} exact match (%), {args.niah_samples} samples per cell:")
        print(table)
        note = "" if renderer == "matplotlib" else " (matplotlib not installed: built-in PNG writer)"
        print(f"wrote {out_dir / 'niah.md'}, {out_dir / 'niah.csv'}, {out_dir / 'niah.png'}{note}")
    if not chosen and task.kind == "niah":
        demo = niah_demo(run.pure, run.state, task.niah_config(), seed=task.eval_seed)
        results["demo"] = demo
        print(f"demo: ...{demo['prompt_tail']!r} -> generated {demo['generated']!r} (true {demo['answer']!r})")
    if args.generate is not None or (not chosen and task.kind == "text"):
        prompt = args.generate if args.generate is not None else "The "
        text = generate_text(run.pure, run.state, prompt, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature)
        results["generation"] = {"prompt": prompt, "output": text, "temperature": args.temperature}
        how = "greedy" if args.temperature == 0 else f"T={args.temperature}"
        print(f"generation ({how}) from {prompt!r}: {text!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "results.json", _plain(results))
    print(f"results: {out_dir / 'results.json'}")
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
    r = stacked_mqar_accuracy(run.pure, run.state, cfg, num_examples=n, seed=task.eval_seed, bucket=bucket)
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
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


__all__ = ["build_parser", "main"]
