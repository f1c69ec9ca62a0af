"""Jobs of the experiment suite: one training run (plus its evaluation) each, resumable, one JSON per job.

A :class:`Job` is a preset, dotted overrides and a seed. :func:`run_job` trains it with :func:`mc_jax.train.train`
(in-process, no shell), evaluates what its ``evaluate`` field asks for and writes ``<out>/jobs/<id>.json`` with the
config, seed, accuracy (or loss), wall time and git revision; a job whose JSON exists is skipped (resumable). The
Zoology learning-rate protocol (:func:`lr_sweep`) is two phases: every model at each learning rate on a validation
seed, then the chosen rate on the reported seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

VALIDATION_SEED = 100  # the Zoology protocol picks the learning rate on a seed that is not reported
LRS = (1e-3, 3e-3, 1e-2)


@dataclass(frozen=True)
class Job:
    """One run: ``preset`` + ``overrides`` (``train.seed`` is set from ``seed``), evaluated by ``evaluate``.

    ``group``: the model the job belongs to (jobs of a group differ only in seed / learning rate); ``evaluate``:
    ``"final"`` (the run's held-out accuracy), ``"stacked"`` (+ accuracy by the segment of the queried pair),
    ``"niah"`` (+ a depth x length grid), ``"lm"`` (+ bits per byte and loss by position), ``"posttrain"`` (no
    training: the checkpoint of job ``source`` loaded into this job's model, then the NIAH grid). With any other
    evaluation, ``source`` names the job whose checkpoint starts this run (``train(init_from=...)``: every
    parameter from it, the router new; a fine-tune of all parameters, fresh optimizer, this job's steps).
    """

    exp: str
    group: str
    preset: str | None
    overrides: tuple[str, ...]
    seed: int
    lr: float | None = None
    evaluate: str = "final"
    extra: tuple[tuple[str, Any], ...] = ()
    source: str | None = None
    lr_from: str | None = None  # a budget cut: take the rate chosen for this group instead of sweeping
    lrs: tuple[float, ...] | None = None  # the rates of this model (None: the plan's), e.g. a sweep for one model
    tier: int = 0  # run order of the reported jobs: tier by tier, each tier seed by seed

    @property
    def id(self) -> str:
        lr = "" if self.lr is None else f"-lr{self.lr:g}"
        return f"{self.group}{lr}-s{self.seed}"

    def options(self) -> dict[str, Any]:
        return dict(self.extra)

    def all_overrides(self) -> list[str]:
        out = list(self.overrides) + [f"train.seed={self.seed}", "train.baseline="]
        if self.lr is not None:
            out.append(f"train.lr={self.lr}")
        return out


@dataclass
class Outcome:
    job: Job
    result: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


def git_revision() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             check=False)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def job_file(out: Path, job: Job) -> Path:
    return out / job.exp / "jobs" / f"{job.id}.json"


def run_dir(out: Path, job: Job) -> Path:
    return out / job.exp / "runs" / job.id


def source_dir(out: Path, job: Job) -> Path:
    """The run directory of the job ``job.source`` names (same experiment)."""
    if job.source is None:
        raise ValueError(f"job {job.id} names no source job")
    return Path(out) / job.exp / "runs" / job.source


def load_result(out: Path, job: Job) -> dict[str, Any] | None:
    path = job_file(out, job)
    return json.loads(path.read_text()) if path.exists() else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=float))
    tmp.replace(path)


def resumable(rdir: Path, config) -> bool:
    """Whether ``rdir`` holds an unfinished run of ``config`` with a committed checkpoint (a job stopped by SIGTERM
    or a crash): the job continues it instead of starting again. A run of another config is not resumable."""
    from mc_jax.train.checkpoint import Checkpointer, CheckpointError, read_run_file
    from mc_jax.train.config import RESUMABLE_CHANGES, config_diff
    from mc_jax.train.loop import holds_run, read_final

    if not (rdir.is_dir() and holds_run(rdir)) or read_final(rdir) is not None:
        return False
    stored = read_run_file(rdir)
    if stored is None or config_diff(stored, config, ignore=RESUMABLE_CHANGES):
        return False
    try:
        checkpoints = Checkpointer(rdir, read_only=True)
    except CheckpointError:
        return False
    try:
        return checkpoints.latest_step() is not None
    finally:
        checkpoints.close()


def run_job(job: Job, out: str | Path) -> dict[str, Any]:
    """Train and evaluate ``job`` (skipped when its JSON exists; an unfinished run of it with a committed checkpoint
    is continued, :func:`resumable`, anything else in its run directory is replaced); returns the JSON's content."""
    from mc_jax.experiments import evaluation
    from mc_jax.train import load_run_config, train
    from mc_jax.train.config import config_to_dict

    out = Path(out)
    done = load_result(out, job)
    if done is not None:
        return done
    t0 = time.perf_counter()
    config = load_run_config(job.preset, job.all_overrides())
    record: dict[str, Any] = {"id": job.id, "exp": job.exp, "group": job.group, "seed": job.seed, "lr": job.lr,
                              "preset": job.preset, "overrides": list(job.overrides), "evaluate": job.evaluate,
                              "config": config_to_dict(config), "git_revision": git_revision()}
    if job.evaluate == "posttrain":
        record.update(evaluation.post_training(source_dir(out, job), job, config))
    else:
        rdir = run_dir(out, job)
        resume = resumable(rdir, config)  # the checkpoint holds the fine-tune's state: no init_from then
        init_from = None if job.source is None or resume else source_dir(out, job)
        result = train(config, rdir, resume=resume, overwrite=rdir.exists() and not resume, progress=False,
                       init_from=init_from)
        if job.source is not None:
            record["source"] = job.source
        record.update({"accuracy": result.final_eval.get("accuracy"), "eval": result.final_eval,
                       "train_loss": result.train_loss if math.isfinite(result.train_loss) else None,
                       "tokens_per_s": result.tokens_per_s, "num_params": result.num_params})
        record.update(evaluation.extra(job, rdir, config))
    record["wall_seconds"] = time.perf_counter() - t0
    _write_json(job_file(out, job), record)
    return record


_SUITE_PID: int | None = None  # in a worker process: the pid of the suite that started it


def _remember_suite(pid: int) -> None:
    global _SUITE_PID
    _SUITE_PID = pid


def _run_job_safe(job: Job, out: str) -> tuple[Job, dict[str, Any]]:
    from mc_jax.train import Preempted

    if _SUITE_PID is not None and os.getppid() != _SUITE_PID:  # the suite is gone: start nothing more
        return job, {"id": job.id, "error": "the suite process ended before this job started"}
    try:
        return job, run_job(job, out)
    except Preempted:  # SIGTERM / Ctrl-C stops the suite (the run's checkpoint is saved), it does not skip a job
        raise
    except Exception as err:  # noqa: BLE001 -- a failed job is recorded, not fatal for the suite (e.g. a diverging model)
        return job, {"id": job.id, "error": f"{type(err).__name__}: {err}"}


def run_jobs(jobs: list[Job], out: str | Path, workers: int = 1, log=print, *, run: bool = True) -> list[Outcome]:
    """Run ``jobs`` (``workers`` processes at a time; 1 = in this process), skipping finished ones (``run=False``:
    only the finished ones' outcomes, nothing is run).

    Workers start no new job once the suite process has ended (a killed suite leaves at most the jobs in flight,
    which still write their JSONs), and an interrupted suite cancels the queued jobs before it exits."""
    out = Path(out)
    outcomes, todo = [], []
    for job in jobs:
        done = load_result(out, job)
        if done is not None:
            outcomes.append(Outcome(job, done, skipped=True))
        else:
            todo.append(job)
    if not run:
        return outcomes
    if todo:
        log(f"{len(todo)} job(s) to run, {len(outcomes)} already done")
    pool = None
    if workers <= 1:
        results = (_run_job_safe(job, str(out)) for job in todo)
    else:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_remember_suite,
                                   initargs=(os.getpid(),))
        results = pool.map(_run_job_safe, todo, [str(out)] * len(todo))
    try:
        for job, result in results:
            status = f"error: {result['error']}" if "error" in result else _headline(result)
            log(f"  {job.exp}/{job.id}: {status}")
            outcomes.append(Outcome(job, result))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


def _headline(result: dict[str, Any]) -> str:
    acc = result.get("accuracy")
    bits = result.get("bits_per_byte")
    parts = [f"accuracy {100 * acc:.1f}%" if acc is not None else "", f"{bits:.3f} bits/byte" if bits else "",
             f"{result.get('wall_seconds', 0):.0f} s"]
    return ", ".join(p for p in parts if p)


def model_rates(model: Job, lrs: tuple[float, ...]) -> tuple[float, ...]:
    """The rates ``model`` is trained at: its own ``lrs`` or the plan's; ``()`` when it takes another group's
    chosen rate (``lr_from``; that group is swept over the plan's rates or its own)."""
    if model.lr_from is not None:
        return ()
    return model.lrs or lrs


def lr_sweep(models: list[Job], seeds: tuple[int, ...], lrs: tuple[float, ...], out: str | Path, workers: int,
             log=print, *, run: bool = True) -> list[Outcome]:
    """The Zoology protocol: each model (a job template) at every ``lr`` on :data:`VALIDATION_SEED`, then the best
    rate (highest accuracy, lowest loss for language models) on ``seeds``. Returns the outcomes of both phases.

    A model with ``lr_from`` is not swept: it takes the rate chosen for that group (a budget cut, reported as such);
    a model with its own ``lrs`` is swept over those (one rate: trained at it) whatever the plan's rates.
    The reported runs go tier by tier (``Job.tier``), each tier seed by seed, so a suite stopped early has its first
    tiers complete at every seed. ``run=False``: the finished jobs only (a model whose rate is not chosen yet is
    left out)."""
    swept = [m for m in models if len(model_rates(m, lrs)) > 1]
    unknown = sorted({m.lr_from for m in models if not model_rates(m, lrs)} - {m.group for m in swept})
    if unknown:
        raise ValueError(f"lr_from names groups that are not swept: {unknown}")
    phase1 = run_jobs([dataclasses.replace(m, seed=VALIDATION_SEED, lr=lr) for m in swept
                       for lr in model_rates(m, lrs)], out, workers, log, run=run)
    swept_lrs = {m.group: [o for o in phase1 if o.job.group == m.group] for m in swept}
    chosen = {m.group: best_lr(swept_lrs[m.group]) for m in swept
              if len(swept_lrs[m.group]) == len(model_rates(m, lrs))}

    def rate(m: Job) -> float | None:
        own = model_rates(m, lrs)
        return own[0] if len(own) == 1 else chosen.get(m.lr_from or m.group)

    final = [dataclasses.replace(m, seed=s, lr=rate(m)) for t in sorted({m.tier for m in models}) for s in seeds
             for m in models if m.tier == t and rate(m) is not None]
    return phase1 + run_jobs(final, out, workers, log, run=run)


def score(result: dict[str, Any]) -> float:
    """Higher is better: accuracy, or minus the bits per byte of a language model; failed runs score -inf."""
    if "error" in result:
        return -math.inf
    if result.get("bits_per_byte") is not None:
        return -result["bits_per_byte"]
    acc = result.get("accuracy")
    return -math.inf if acc is None else acc


def best_lr(outcomes: list[Outcome]) -> float:
    return max(outcomes, key=lambda o: score(o.result)).job.lr


__all__ = [
    "LRS",
    "VALIDATION_SEED",
    "Job",
    "Outcome",
    "best_lr",
    "git_revision",
    "load_result",
    "lr_sweep",
    "run_dir",
    "run_job",
    "source_dir",
    "run_jobs",
    "score",
]
