"""``mc-train`` / ``python train.py [--preset NAME] [--resume | --overwrite] [key=value ...]``

With no arguments: the tiny MC layer of the ``train_tiny_mqar`` preset is trained on stacked MQAR, then the same
layer without caching and the same model with softmax attention (``train.baseline=none,attention``: the gain and the
ceiling), and a comparison table is printed. Overrides are dotted paths into the run config, shared with the model
config, and may come anywhere on the line::

    python train.py model.mixer.aggregation=ssc model.mixer.top_k=2 train.steps=200
    python train.py train.baseline= train.task.kind=text train.task.path=my.txt train.task.seq_len=256

Runs go to ``<train.out_dir>/main`` and one directory per baseline (``baseline`` for the model without caching,
``attention``, ...); ``train.out_dir`` defaults to ``runs/<preset name>``. An output directory that already holds a
run is refused unless ``--resume`` (continue exactly from the newest checkpoint; the stored config is used, with any
overrides checked against it) or ``--overwrite`` (start over).
``--resume`` leaves a finished run as it is; ``--resume train.steps=N`` with N above its steps extends it (see
mc_jax/train/loop.py for the schedule). ``--resume --resume-from-step S`` continues from committed checkpoint S (after
a damaged newer one; the newer ones are moved to checkpoints_set_aside/). ``--init-from CKPT`` starts new runs from a
checkpoint's parameters (fresh optimizer, step 0), also into a model whose mixer differs only in caching settings
(post-training Memory Caching).

Exit codes: 0 done; 1 run / data / checkpoint error; 2 bad configuration; 3 NaN loss; 75 stopped by SIGTERM / SIGINT
after saving a checkpoint (resume command printed); 130 a second SIGINT / SIGTERM (immediate exit).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mc_jax.cli_common import add_overrides, parse_args, quiet_logs
from mc_jax.configs_util import apply_overrides
from mc_jax.files import write_json_atomic
from mc_jax.train.checkpoint import CheckpointError, read_run_file
from mc_jax.train.config import (
    DEFAULT_PRESET,
    RECALL_TASKS,
    RESUMABLE_CHANGES,
    RunConfig,
    baseline_configs,
    config_diff,
    describe_model,
    load_run_config,
)
from mc_jax.train.data import DataError
from mc_jax.train.distributed import initialize_from_env
from mc_jax.train.loop import (
    CURVES_FILE,
    EXIT_INTERRUPTED,
    EXIT_PREEMPTED,
    NonFiniteLossError,
    Preempted,
    RunDirError,
    TrainError,
    TrainResult,
    check_run_dir,
    train,
)
from mc_jax.train.metrics import JobProgress, read_metrics

COMPARISON_FILE = "comparison.json"


def route_background_errors() -> None:
    """Exceptions of background threads (orbax's save threads, tensorboardX's writer) and unraisable ones (e.g. an
    atexit flush on a full disk) go to the newest run's error log, not as tracebacks over the run's own message."""
    import threading

    from mc_jax.files import append_log
    from mc_jax.train.loop import LAST_ERROR_LOG

    def record(kind: str, exc_type, exc, tb) -> None:
        import traceback

        if LAST_ERROR_LOG:
            append_log(LAST_ERROR_LOG[0], f"==== {kind}\n" + "".join(traceback.format_exception(exc_type, exc, tb)))

    class ToLog(logging.Handler):  # asyncio reports orbax's failed write tasks when they are collected
        def emit(self, rec: logging.LogRecord) -> None:
            if LAST_ERROR_LOG:
                append_log(LAST_ERROR_LOG[0], f"==== {rec.name}\n{self.format(rec)}")

    aio = logging.getLogger("asyncio")
    aio.addHandler(ToLog(logging.ERROR))
    aio.propagate = False
    threading.excepthook = lambda args: record(f"thread {getattr(args.thread, 'name', '?')}", args.exc_type,
                                               args.exc_value, args.exc_traceback)
    sys.unraisablehook = lambda u: record(f"unraisable in {u.object!r}", u.exc_type, u.exc_value, u.exc_traceback)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[1].replace("::", ":"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_overrides(p, "dotted config overrides, e.g. model.mixer.aggregation=ssc train.steps=200")
    p.add_argument("--preset", default=None,
                   help=f"a preset name (see --list-presets) or a path to a .py file defining CONFIG "
                        f"(default: {DEFAULT_PRESET})")
    p.add_argument("--list-presets", action="store_true", help="print the shipped presets and exit")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run(s) in train.out_dir exactly")
    mode.add_argument("--overwrite", action="store_true", help="replace the run(s) in train.out_dir")
    p.add_argument("--resume-from-step", type=int, default=None, metavar="S",
                   help="with --resume: continue from committed checkpoint S (e.g. the intact one offered after a "
                        "damaged checkpoint); newer checkpoints are moved to checkpoints_set_aside/")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start new run(s) from the parameters of CKPT (a run, checkpoints or step directory): fresh "
                        "optimizer and step 0; the mixer may differ in caching settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the log lines stay)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    dist = p.add_argument_group("multi-host (see README, Scale-out)")
    dist.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                      help="jax.distributed coordinator (process 0's address); or env MC_COORDINATOR")
    dist.add_argument("--num-processes", type=int, default=None, help="processes in the job; or MC_NUM_PROCESSES")
    dist.add_argument("--process-id", type=int, default=None, help="this process's index; or MC_PROCESS_ID")
    dist.add_argument("--distributed", action="store_true",
                      help="jax.distributed.initialize() with auto-detection (SLURM, TPU pod, MPI); "
                           "or MC_DISTRIBUTED=1")
    return p


def run_dirs(config: RunConfig) -> list[tuple[str, RunConfig, Path]]:
    """``[(name, config, run_dir)]``: the main run, then one run per kind of ``train.baseline``."""
    root = Path(config.train.out_dir)
    return [("main", config, root / "main")] + [(name, cfg, root / name) for name, cfg in baseline_configs(config)]


def resolve_configs(args: argparse.Namespace) -> list[tuple[str, RunConfig, Path]]:
    """The runs to do. With ``--resume`` the config stored in the main run is the base (the overrides go on top and
    may only change fields that keep the resumption exact)."""
    requested = load_run_config(args.preset, args.overrides)
    if not args.resume:
        return run_dirs(requested)
    main_dir = Path(requested.train.out_dir) / "main"
    stored = read_run_file(main_dir)
    if stored is None:
        return run_dirs(requested)
    config = apply_overrides(stored, args.overrides)
    diff = config_diff(stored, config, ignore=RESUMABLE_CHANGES + ("train.steps",))  # steps: see check_steps
    if diff:
        raise CheckpointError(f"run {main_dir} was written with a different config; --resume refuses to change:\n  "
                              + "\n  ".join(diff))
    return run_dirs(config)


def _score(result: TrainResult) -> str:
    ev, kind = result.final_eval, result.config.train.task.kind
    if kind in RECALL_TASKS:
        return f"{ev['accuracy']:.1%}"
    return f"{ev['exact_match']:.1%}" if kind == "niah" else f"{ev['perplexity']:.3f}"


def comparison_lines(results: list[tuple[str, TrainResult]]) -> list[str]:
    """On a recall task: MC against the model without caching (the gain) and against attention (the ceiling)."""
    task = results[0][1].config.train.task
    if task.kind not in RECALL_TASKS:
        return []
    acc = {name: r.final_eval["accuracy"] for name, r in results}
    where = (f"on {task.eval_examples} held-out {'stacked ' if task.kind == 'stacked_mqar' else ''}MQAR sequences "
             f"(L={task.seq_len}, kv={task.num_kv_pairs})")
    lines = []
    if "baseline" in acc:
        a, b = acc["main"], acc["baseline"]
        ratio = f"{a / b:.2f}x" if b > 0 else "inf"
        lines.append(f"memory caching: {a:.1%} vs {b:.1%} without caching ({ratio}, {100 * (a - b):+.1f} points) "
                     f"{where}")
    if "attention" in acc:
        line = f"softmax attention (the ceiling): {acc['attention']:.1%}"
        if "baseline" in acc and acc["attention"] > acc["baseline"]:
            closed = (acc["main"] - acc["baseline"]) / (acc["attention"] - acc["baseline"])
            line += f"; caching closes {closed:.0%} of the gap from no caching to attention"
        lines.append(line)
    return lines


def format_table(results: list[tuple[str, TrainResult]]) -> str:
    task = results[0][1].config.train.task
    metric = "recall acc" if task.kind in RECALL_TASKS else ("exact" if task.kind == "niah" else "val ppl")
    head = f"{'run':9s} {'model':48s} {'params':>8s} {'eval loss':>9s} {metric:>10s} {'tok/s':>8s} {'train s':>8s}"
    lines = [head, "-" * len(head)]
    for name, r in results:
        lines.append(f"{name:9s} {describe_model(r.config.model)[:48]:48s} {r.num_params:>8,d} "
                     f"{r.final_eval['loss']:>9.4f} {_score(r):>10s} {r.tokens_per_s:>8,.0f} {r.train_seconds:>8.1f}")
    return "\n".join(lines + comparison_lines(results))


def list_presets() -> str:
    from mc_jax.configs_util import preset_names

    return "\n".join(preset_names())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    quiet_logs()
    if args.list_presets:
        print(list_presets())
        return 0
    if argv is None:  # the command line (not a library call from a test or notebook)
        route_background_errors()
    try:  # before any device is touched
        initialize_from_env(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    except (ValueError, RuntimeError) as err:
        print(f"error: distributed start-up failed: {err}", file=sys.stderr)
        return 2
    try:
        runs = resolve_configs(args)
    except (ValueError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        from mc_jax.configs_util import to_dict

        print(json.dumps({name: to_dict(cfg) for name, cfg, _ in runs}, indent=2))
        return 0
    if args.init_from is not None and args.resume:
        print("error: --init-from starts new runs; --resume continues them: pass only one of them", file=sys.stderr)
        return 2
    if args.resume_from_step is not None and not args.resume:
        print("error: --resume-from-step needs --resume", file=sys.stderr)
        return 2
    results: list[tuple[str, TrainResult]] = []
    import jax

    job = JobProgress(sum(cfg.train.steps for _, cfg, _ in runs),
                      enabled=not args.no_progress and jax.process_index() == 0)
    root = Path(runs[0][1].train.out_dir)
    try:
        for _, cfg, run_dir in runs:  # refuse before anything is written
            check_run_dir(run_dir, cfg, resume=args.resume, overwrite=args.overwrite)
        for i, (name, cfg, run_dir) in enumerate(runs):
            label = f"[{name} {i + 1}/{len(runs)}] " if len(runs) > 1 else ""
            step = args.resume_from_step if name == "main" else None
            results.append((name, train(cfg, run_dir, resume=args.resume, overwrite=args.overwrite,
                                        progress=not args.no_progress, label=label, job=job, resume_from_step=step,
                                        init_from=args.init_from)))
    except Preempted as err:
        print(f"stopped by {err.signal_name}: checkpoint of step {err.step} saved in {err.checkpoint}\n"
              f"resume with: python train.py --resume train.out_dir={root}", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:  # between runs, outside the training loop's handler
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (RunDirError, DataError, CheckpointError, TrainError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        job.close()
    if jax.process_index() != 0:  # process 0 reports for a multi-host job
        return 0
    table = format_table(results)
    print(table)
    try:
        write_json_atomic(root / COMPARISON_FILE, {name: r.summary() for name, r in results})
        files = [str(root / COMPARISON_FILE)]
    except OSError as err:  # e.g. a finished job on a read-only disk: the runs themselves are complete
        print(f"warning: could not write {root / COMPARISON_FILE}: {err.strerror}", file=sys.stderr)
        files = []
    if len(results) > 1 and files:
        from mc_jax.plots import plot_training_curves

        curves = {name: read_metrics(Path(r.run_dir) / "metrics.jsonl") for name, r in results}
        labels = [name if describe_model(r.config.model) == name else f"{name} = {describe_model(r.config.model)}"
                  for name, r in results]
        if plot_training_curves(curves, root / CURVES_FILE, title=f"{root}: " + "; ".join(labels)) is not None:
            files.append(str(root / CURVES_FILE))
    print(f"runs: {', '.join(r.run_dir for _, r in results)}; wrote {', '.join(files) or 'nothing more'}")
    evaluator = "mc-eval" if Path(sys.argv[0]).name.startswith("mc-") else "python eval.py"
    print(f"evaluate with: {evaluator} {results[0][1].run_dir}; curves in TensorBoard: tensorboard --logdir {root}")
    return 0


__all__ = ["build_parser", "comparison_lines", "format_table", "list_presets", "main", "resolve_configs", "run_dirs"]
