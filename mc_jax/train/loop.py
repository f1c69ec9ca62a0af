"""The training loop: one run directory, one model, checkpoints, metrics, evaluation, exact resumption.

    result = train(config, "runs/x/main")                       # fresh run (refuses a directory holding a run)
    result = train(config, "runs/x/main", resume=True)          # continue from the newest checkpoint

Exact resumption: a checkpoint at step ``s`` holds the parameters and optimizer state after ``s`` updates and the
data iterator's state after ``s`` batches, so a resumed run computes bit-identical losses for steps ``s+1 ...``
(synthetic examples and the data order are pure functions of the seed; the step is one deterministic XLA program).
Metrics records written after the last checkpoint by a killed process are dropped on resume.

A non-finite loss or gradient stops the run (:class:`NonFiniteLossError`, naming the step) before the update is
applied and before any further checkpoint is written, so the newest checkpoint on disk is the last good state.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import jax
from jax.experimental import multihost_utils

from mc_jax.models import abstract_model, count_params, create_model
from mc_jax.parallel.mesh import mesh_for_run
from mc_jax.train.sharding import TrainSharding, data_shard, init_state
from mc_jax.train.checkpoint import (
    CKPT_SUBDIR,
    RUN_FILE,
    TOKENIZER_FILE,
    Checkpointer,
    CheckpointError,
    check_same_config,
    read_run_file,
    record_session,
    write_json_atomic,
    write_run_file,
)
from mc_jax.train.config import (
    RESUMABLE_CHANGES,
    RunConfig,
    config_to_dict,
    describe_model,
)
from mc_jax.train.data import TaskData, build_task_data
from mc_jax.train.metrics import METRICS_FILE, JobProgress, MetricsLogger, read_metrics
from mc_jax.train.optim import make_optimizer, make_schedule
from mc_jax.train.runinfo import finish_session, public, session_info
from mc_jax.train.step import (
    evaluate_batches,
    make_train_step,
    reshape_for_accum,
    split_model,
)

FINAL_FILE = "final.json"
CURVES_FILE = "curves.png"
RUN_MARKERS = (RUN_FILE, CKPT_SUBDIR, METRICS_FILE, FINAL_FILE)


class TrainError(RuntimeError):
    """Training could not go on (see the message)."""


class NonFiniteLossError(TrainError):
    """The loss (or gradient) became NaN/inf at ``step``; the newest checkpoint is the last good one."""

    def __init__(self, message: str, step: int, last_checkpoint: int | None):
        super().__init__(message)
        self.step = step
        self.last_checkpoint = last_checkpoint


class RunDirError(ValueError):
    """The output directory cannot be used as asked (it holds a run, or unrelated files)."""


@dataclass
class TrainResult:
    run_dir: str
    config: RunConfig
    step: int
    num_params: int
    final_eval: dict[str, float]
    train_loss: float
    tokens_per_s: float
    train_seconds: float
    wall_seconds: float
    resumed_from: int | None = None
    losses: dict[int, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers, e.g. no training step in this process, become ``None``)."""
        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "run_dir": self.run_dir, "model": describe_model(self.config.model), "step": self.step,
            "num_params": self.num_params, "final_eval": self.final_eval, "train_loss": num(self.train_loss),
            "tokens_per_s": num(self.tokens_per_s), "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds, "resumed_from": self.resumed_from,
        }


# ---- run directory ---------------------------------------------------------------------------------------------------
def holds_run(run_dir: str | Path) -> bool:
    p = Path(run_dir)
    return p.is_dir() and any((p / m).exists() for m in RUN_MARKERS)


def check_run_dir(run_dir: str | Path, config: RunConfig, *, resume: bool, overwrite: bool) -> None:
    """Side-effect-free refusal checks (call them for every run before starting any)."""
    p = Path(run_dir)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other")
    if p.exists() and not p.is_dir():
        raise RunDirError(f"output path {p} exists and is not a directory")
    if not p.exists():
        return
    if holds_run(p):
        if resume:
            stored = read_run_file(p)
            if stored is not None:
                check_same_config(stored, config, where=f"run {p}", ignore=RESUMABLE_CHANGES)
            return
        if overwrite:
            if not (p / RUN_FILE).exists():
                raise RunDirError(f"{p} looks like a damaged run (no {RUN_FILE}); refusing to delete it with "
                                  "--overwrite: remove it by hand or pick another train.out_dir")
            return
        raise RunDirError(f"output directory {p} already holds a run; pass --resume to continue it or "
                          "--overwrite to replace it (or choose another train.out_dir)")
    if any(p.iterdir()):
        raise RunDirError(f"output directory {p} is not empty and holds no mc_jax run; refusing to write into it "
                          "(choose another train.out_dir)")


def _prepare_run_dir(run_dir: Path, config: RunConfig, *, resume: bool, overwrite: bool,
                     session: dict[str, Any]) -> None:
    check_run_dir(run_dir, config, resume=resume, overwrite=overwrite)
    if overwrite and holds_run(run_dir):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.train.task.tokenizer != "byte" and not (run_dir / TOKENIZER_FILE).exists():
        shutil.copyfile(config.train.task.tokenizer, run_dir / TOKENIZER_FILE)  # eval reads it from the run
    if not (run_dir / RUN_FILE).exists():
        write_run_file(run_dir, config, public(session))
    else:
        record_session(run_dir, public(session))


def _finite(x: float) -> bool:
    return math.isfinite(x)


class _NullLogger:
    """Metrics sink of the non-primary processes of a multi-host run (process 0 writes the files)."""

    tensorboard_enabled = True
    path = Path(METRICS_FILE)

    def log(self, step: int, split: str, values: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# ---- the loop ----------------------------------------------------------------------------------------------------------
def train(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    label: str = "",
    stream: IO[str] | None = None,
    data: TaskData | None = None,
    job: JobProgress | None = None,
    plot: bool = True,
) -> TrainResult:
    """Train ``config`` in ``run_dir``; see the module docstring. Raises :class:`RunDirError`,
    :class:`~mc_jax.train.data.DataError`, :class:`~mc_jax.train.checkpoint.CheckpointError` or
    :class:`NonFiniteLossError`; nothing already on disk is lost in any of these cases.

    ``progress``: show a progress bar (log lines are printed to ``stream`` either way); ``job``: the bar of a job of
    several runs (its ETA covers them all; the caller closes it), else the run gets its own. ``plot``: write
    ``<run_dir>/curves.png`` (loss and accuracy curves; needs matplotlib) at the end."""
    wall0 = time.perf_counter()
    stream = stream or sys.stderr
    tc = config.train
    run_dir = Path(run_dir).absolute()
    check_run_dir(run_dir, config, resume=resume, overwrite=overwrite)
    # The mesh (None: the single-device program) fails here for sizes that do not fit the devices / model / batch.
    mesh = mesh_for_run(config.mesh, config.model, tc.micro_batch)
    primary = jax.process_index() == 0
    # bad data fails here, before anything is written; each process loads its own rows of every global batch
    data = data or build_task_data(config, shard=data_shard(mesh))

    tx = make_optimizer(tc)
    schedule = make_schedule(tc)
    shard = None
    if mesh is None:
        model = create_model(config.model, seed=tc.seed)
        num_params = count_params(model)
        graphdef, params, rest = split_model(model)
        del model
        opt_state = tx.init(params)
    else:  # parameters and optimizer state are created directly in their shards
        abstract = abstract_model(config.model)
        num_params = count_params(abstract)
        graphdef, abstract_params, rest = split_model(abstract)
        shard = TrainSharding.create(mesh, abstract_params, tx)
        params, opt_state = init_state(lambda: split_model(create_model(config.model, seed=tc.seed))[1], tx, shard)

    # Read the checkpoint before touching the directory: a bad checkpoint leaves everything as it was.
    start, data_state, resumed_from = 0, None, None
    if resume and (run_dir / CKPT_SUBDIR).is_dir():
        reader = Checkpointer(run_dir, read_only=True)
        latest = reader.latest_step()
        if latest is not None:
            stored = reader.read_config(latest)
            check_same_config(stored, config, where=f"checkpoint {reader.step_dir(latest)}",
                              ignore=RESUMABLE_CHANGES)
            params, opt_state, meta = reader.restore(latest, params, opt_state)
            start, data_state, resumed_from = latest, meta.get("data_state"), latest
        reader.close()
    _sync("mc_jax.train: checkpoint read")  # nobody touches the directory before every process has read it
    session = session_info(config, start_step=start)
    if primary:
        _prepare_run_dir(run_dir, config, resume=resume, overwrite=overwrite, session=session)
    _sync("mc_jax.train: run directory ready")
    ckpt = Checkpointer(run_dir, keep=tc.keep)
    logger = MetricsLogger(run_dir, resume_step=start if resume else None) if primary else _NullLogger()
    own_bar = job is None
    bar = job if job is not None else JobProgress(tc.steps - start, enabled=progress and primary, stream=stream)
    if job is not None:
        bar.start_run(label, done_steps=start)
    say = bar.message if primary else (lambda text: None)
    where = f"resumed from step {start}" if resumed_from is not None else "from scratch"
    say(f"{label}{describe_model(config.model)}: {num_params:,} params, {data.description}; "
        f"{tc.steps} steps x {tc.batch_size} seqs ({where}) -> {run_dir}")
    if primary and not logger.tensorboard_enabled and start == 0:
        say(f"{label}tensorboardX is not installed (pip install 'mc_jax[tensorboard]'): metrics go to "
            f"{logger.path.name} only")

    step_fn = make_train_step(graphdef, rest, tx, tc.accum, shard=shard, donate=shard is not None)
    it = data.iterator(data_state)
    losses: dict[int, float] = {}
    timed_steps, timed_seconds = 0, 0.0
    tokens_per_s, last_loss = float("nan"), float("nan")
    last_saved = start if resumed_from is not None else None

    def do_eval(step: int) -> dict[str, float]:
        metrics = evaluate_batches(graphdef, params, rest, data.eval_batches, shard=shard)
        logger.log(step, "eval", metrics)
        return metrics

    try:
        for step in range(start + 1, tc.steps + 1):
            t0 = time.perf_counter()
            batch = reshape_for_accum(next(it), tc.accum)
            if shard is not None:  # this process's rows -> the global batch
                batch = shard.global_batch(batch)
            new_params, new_opt, m = step_fn(params, opt_state, batch)
            loss, grad_norm = float(m["loss"]), float(m["grad_norm"])
            dt = time.perf_counter() - t0
            if step > start + 1:  # the first step of a process includes compilation
                timed_steps, timed_seconds = timed_steps + 1, timed_seconds + dt
                tokens_per_s = timed_steps * tc.tokens_per_step / timed_seconds
            lr = float(schedule(step - 1))
            if not (_finite(loss) and _finite(grad_norm)):
                logger.log(step, "train", {"loss": loss, "grad_norm": grad_norm, "lr": lr})
                ckpt.wait()
                what = "loss" if not _finite(loss) else "gradient norm"
                value = loss if not _finite(loss) else grad_norm
                kept = (f"the last good checkpoint (step {last_saved}) in {ckpt.directory} is intact"
                        if last_saved is not None else "no checkpoint had been written yet")
                raise NonFiniteLossError(
                    f"training stopped: the {what} is {value} at step {step} (lr {lr:.3g}); the update was not "
                    f"applied and {kept}. Lower train.lr, raise train.warmup or check the data.",
                    step, last_saved)
            params, opt_state = new_params, new_opt
            losses[step] = last_loss = loss
            if step % tc.log_every == 0 or step == start + 1 or step == tc.steps:
                logger.log(step, "train", {"loss": loss, "accuracy": float(m["accuracy"]), "grad_norm": grad_norm,
                                           "lr": lr, "tokens_per_s": tokens_per_s})
            bar.update(loss, tokens_per_s)
            if tc.eval_every and step % tc.eval_every == 0 and step < tc.steps:
                ev = do_eval(step)
                say(f"{label}step {step}: eval loss {ev['loss']:.4f} acc {ev['accuracy']:.2%} "
                    f"exact {ev['exact_match']:.2%}")
            if tc.ckpt_every and step % tc.ckpt_every == 0 and step < tc.steps:
                ckpt.save(step, params, opt_state, data_state=it.get_state(), config=config)
                last_saved = step
        if ckpt.latest_step() != tc.steps:
            ckpt.save(tc.steps, params, opt_state, data_state=it.get_state(), config=config)
        final = do_eval(tc.steps)
        ckpt.wait()
    finally:
        if own_bar:
            bar.close()
        logger.close()
        ckpt.close()

    result = TrainResult(
        run_dir=str(run_dir), config=config, step=tc.steps, num_params=num_params, final_eval=final,
        train_loss=last_loss, tokens_per_s=tokens_per_s, train_seconds=timed_seconds,
        wall_seconds=time.perf_counter() - wall0, resumed_from=resumed_from, losses=losses,
    )
    if primary:
        write_json_atomic(run_dir / FINAL_FILE, {**result.summary(), "config": config_to_dict(config)})
        record_session(run_dir, finish_session(session, end_step=tc.steps))
        if plot:
            from mc_jax.plots import plot_training_curves

            plot_training_curves({describe_model(config.model): read_metrics(logger.path)}, run_dir / CURVES_FILE,
                                 title=f"{run_dir.name}: {describe_model(config.model)}, {data.description}")
    _sync("mc_jax.train: done")
    say(f"{label}done: eval loss {final['loss']:.4f}, accuracy {final['accuracy']:.2%}, "
        f"exact match {final['exact_match']:.2%} ({tokens_per_s:,.0f} tok/s)")
    return result


__all__ = [
    "CURVES_FILE", "FINAL_FILE", "NonFiniteLossError", "RunDirError", "TrainError", "TrainResult", "check_run_dir",
    "holds_run",
    "train", "CheckpointError",
]
