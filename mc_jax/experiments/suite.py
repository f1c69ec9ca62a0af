"""Running an experiment: the learning-rate protocol, post-training jobs, the report; the command line."""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import signal
import sys
import threading
import time
from pathlib import Path

from mc_jax.experiments import report
from mc_jax.experiments.definitions import EXPERIMENTS, TITLES, Plan, plan_of
from mc_jax.experiments.jobs import lr_sweep, run_jobs


def _execute(plan: Plan, out: Path, workers: int, log, run: bool) -> list:
    outcomes = lr_sweep(plan.models, plan.seeds, plan.lrs, out, workers, log, run=run)
    if plan.after:
        chosen = {o.job.group: o.job.lr for o in outcomes if o.job.seed in plan.seeds}
        later = [dataclasses.replace(a, seed=s, lr=chosen[a.source], source=f"{a.source}-lr{chosen[a.source]:g}-s{s}")
                 for a in plan.after for s in plan.seeds if a.source in chosen]
        outcomes += run_jobs(later, out, max(1, workers), log, run=run)
    return outcomes


def _only_seeds(plan: Plan, seeds: tuple[int, ...] | None) -> Plan:
    """``plan`` with its reported seeds (and post-training jobs) restricted to ``seeds`` (``None``: all of them)."""
    if seeds is None:
        return plan
    unknown = sorted(set(seeds) - set(plan.seeds))
    if unknown:
        raise ValueError(f"--seeds {unknown}: not seeds of this experiment (its reported seeds: {list(plan.seeds)})")
    return dataclasses.replace(plan, seeds=tuple(s for s in plan.seeds if s in seeds))


def _only_groups(plan: Plan, patterns: tuple[str, ...] | None) -> Plan:
    """``plan`` restricted to the models whose group matches one of the shell-style ``patterns`` (``None``: all), with
    the models they take their learning rate from (finished ones are skipped) and the post-training jobs of those
    kept."""
    if patterns is None:
        return plan
    kept = {m.group for m in plan.models if any(fnmatch.fnmatchcase(m.group, p) for p in patterns)}
    if not kept:
        groups = ", ".join(m.group for m in plan.models)
        raise ValueError(f"--only {list(patterns)} matches no model of this experiment; its models: {groups}")
    kept |= {m.lr_from for m in plan.models if m.group in kept and m.lr_from is not None}
    return dataclasses.replace(plan, models=[m for m in plan.models if m.group in kept],
                               after=[a for a in plan.after if a.source in kept])


def run_experiment(name: str, *, quick: bool = False, workers: int = 1, out: str | Path | None = None,
                   results: str | Path | None = None, log=print, run: bool = True, extended: bool = False,
                   seeds: tuple[int, ...] | None = None, only: tuple[str, ...] | None = None) -> dict:
    """Run (or resume) experiment ``name`` (its budgeted core; ``extended``: every tier; ``seeds``: only these of its
    reported seeds, e.g. the first seed of everything before the others; ``only``: the models whose group matches
    one of these patterns) and write its report over every finished job of the whole plan; returns the summary.
    ``run=False``: the report only, nothing is run."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)} or 'all'")
    out = Path(out or ("runs/experiments_quick" if quick else "runs/experiments")).absolute()
    results = Path(results or (out / "results" if quick else "docs/results")).absolute()
    whole = EXPERIMENTS[name](quick)
    plan = _only_groups(_only_seeds(plan_of(name, quick, extended), seeds), only)
    partial = (len(plan.models) < len(whole.models) or len(plan.after) < len(whole.after)
               or len(plan.seeds) < len(whole.seeds))
    log(f"{TITLES[name]}{' (quick)' if quick else ''}: {len(plan.models)} models x {len(plan.seeds)} seeds"
        + (f", lr from {list(plan.lrs)} on a validation seed" if len(plan.lrs) > 1 else f", lr {plan.lrs[0]:g}")
        + ("" if not partial else f" (selected: {len(plan.models)} of {len(whole.models)} models"
           f"{'' if extended or only else ', the budgeted core; the rest with --extended'})"))
    outcomes = _execute(plan, out, workers, log, run)
    if partial:  # the report covers every finished job, extended tiers included
        outcomes = _execute(whole, out, workers, log, run=False)
    summary = report.write(name, outcomes, plan.notes, results)
    overview = report.write_overview(results, results.parent / "results.md" if not quick else results / "results.md")
    log(f"wrote {results / name} and {overview}")
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mc_jax.experiments", description=__doc__)
    p.add_argument("name", help=f"one of {', '.join(EXPERIMENTS)} or 'all'")
    p.add_argument("--quick", action="store_true", help="tiny versions (a smoke test of the whole pipeline)")
    p.add_argument("--jobs", type=int, default=1, help="training jobs at a time (worker processes)")
    p.add_argument("--out", default=None, help="job JSONs and run directories (default runs/experiments[_quick])")
    p.add_argument("--results", default=None, help="tables and plots (default docs/results; quick: <out>/results)")
    p.add_argument("--estimate", "--plan", action="store_true",
                   help="print the planned runs and the estimated wall time (at 1 job and at --jobs, 2 by default "
                        "here); run nothing")
    p.add_argument("--report-only", action="store_true",
                   help="write the tables and plots of the jobs finished so far; run nothing")
    p.add_argument("--extended", action="store_true",
                   help="every tier of the grids (default: the budgeted core, tier 0 of each experiment, which fits "
                        "about 2.5 h with --jobs 2 on a 2-core CPU; --estimate shows both)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="run only these of the reported seeds (the learning-rate sweep still runs on its validation "
                        "seed), e.g. --seeds 0 for one seed of everything first; the report covers every finished "
                        "job")
    p.add_argument("--only", nargs="+", default=None, metavar="PATTERN",
                   help="run only the models whose name matches one of these shell-style patterns (e.g. "
                        "'kv32-dla-*'), and the models they take their learning rate from; with --extended for the "
                        "higher tiers; the report covers every finished job")
    p.add_argument("--verbose", action="store_true", help="with --estimate: every model's runs and cost")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        print("error: --jobs must be at least 1", file=sys.stderr)
        return 2
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    if any(n not in EXPERIMENTS for n in names):
        print(f"error: unknown experiment {args.name!r}; choose one of {', '.join(EXPERIMENTS)} or 'all'",
              file=sys.stderr)
        return 2
    if args.only is not None and len(names) > 1:
        print("error: --only selects models of one experiment; name it instead of 'all'", file=sys.stderr)
        return 2
    if (args.seeds is not None or args.only is not None) and args.estimate:
        print("error: --seeds and --only run part of a plan; --estimate prints the whole plan", file=sys.stderr)
        return 2
    seeds, only = (None if x is None else tuple(x) for x in (args.seeds, args.only))
    try:  # a seed or pattern that selects nothing is refused before anything runs
        for name in names:
            _only_groups(_only_seeds(plan_of(name, args.quick, args.extended), seeds), only)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.estimate:
        from mc_jax.experiments.budget import estimate

        jobs = args.jobs if args.jobs > 1 else 2
        print("\n".join(estimate(names, quick=args.quick, jobs=jobs, verbose=args.verbose, extended=args.extended)))
        return 0
    # SIGTERM (kill, a scheduler's stop) unwinds like Ctrl-C, so queued jobs are cancelled and no worker outlives us
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum)) if in_main_thread else None
    t0 = time.perf_counter()
    try:
        for name in names:
            run_experiment(name, quick=args.quick, workers=args.jobs, out=args.out, results=args.results,
                           run=not args.report_only, extended=args.extended,
                           seeds=seeds, only=only)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0
