"""The training loop: one run directory, one model, checkpoints, metrics, evaluation, exact resumption.

    result = train(config, "runs/x/main")                       # fresh run (refuses a directory holding a run)
    result = train(config, "runs/x/main", resume=True)          # continue from the newest checkpoint

Exact resumption: a checkpoint at step ``s`` holds the parameters and optimizer state after ``s`` updates and the
data iterator's state after ``s`` batches, so a resumed run computes bit-identical losses for steps ``s+1 ...``
(synthetic examples and the data order are pure functions of the seed; the step is one deterministic XLA program).
Metrics records written after the last checkpoint by a killed process are dropped on resume.

A non-finite loss or gradient stops the run (:class:`NonFiniteLossError`, naming the step) before the update is
applied and before any further checkpoint is written, so the newest checkpoint on disk is the last good state.

Completion. ``final.json`` is written once, atomically, when a run completes; a run holding it is *finished*.
``--resume`` leaves a finished run exactly as it is (nothing is rewritten; the stored results are returned), unless
``train.steps`` is raised above the finished steps: then the run is *extended* from its last checkpoint. Schedule of
an extension: the optimizer continues on the schedule of the new ``train.steps`` (warm-up, then cosine decay to
``lr * min_lr_ratio`` at the new total), evaluated from the finished step on, so the learning rate jumps from the old
schedule's end to the new schedule's value at that step (an extended run is therefore not the run that would have
been trained for the new total from the start). The old ``final.json`` is kept as ``final.step<N>.json``, ``run.json``
holds the new config, and the new ``final.json`` names ``extended_from``.
A process killed after its last checkpoint but before ``final.json`` leaves a run that the next ``--resume``
completes (evaluation and ``final.json`` only; training statistics travel in every checkpoint), without duplicate
metrics records: records after the resumed step, and the final evaluation being redone, are dropped first.

Preemption. SIGTERM or SIGINT (Ctrl-C) asks the loop to stop: at the next step boundary it saves a checkpoint,
prints where, and raises :class:`Preempted` (``train.py`` exits with :data:`EXIT_PREEMPTED` = 75 and prints the
resume command). A second signal exits at once (code 130): the checkpoint being written, if any, is an orbax
temporary directory or an uncommitted step, both ignored on resume, so nothing committed is corrupted.
``train.ckpt_minutes`` adds time-based checkpoints.

``init_from``: start a new run (step 0, fresh optimizer) from the parameters of a checkpoint, also into a model
whose mixer differs only in its caching settings (:data:`~mc_jax.train.config.INIT_FROM_CHANGES`): the entry point
for post-training Memory Caching.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import jax

from mc_jax.files import append_log, describe_storage_error, not_a_directory, unwritable_reason, write_json_atomic
from mc_jax.models import abstract_model, count_params, create_model
from mc_jax.parallel.mesh import mesh_for_run
from mc_jax.train.checkpoint import (
    CKPT_SUBDIR,
    ERROR_LOG,
    RUN_FILE,
    SET_ASIDE_SUBDIR,
    TOKENIZER_FILE,
    Checkpointer,
    CheckpointError,
    check_same_config,
    locate_checkpoint,
    read_run_file,
    record_session,
    sync_processes,
    transfer_params,
    write_run_file,
)
from mc_jax.train.config import (
    CACHING_KINDS,
    INIT_FROM_CHANGES,
    RESUMABLE_CHANGES,
    RunConfig,
    config_diff,
    config_from_dict,
    config_to_dict,
    describe_model,
)
from mc_jax.train.data import TaskData, build_task_data
from mc_jax.train.metrics import METRICS_FILE, JobProgress, MetricsLogger, read_metrics
from mc_jax.train.optim import make_optimizer, make_schedule
from mc_jax.train.runinfo import finish_session, public, session_info
from mc_jax.train.sharding import TrainSharding, data_shard, init_state
from mc_jax.train.step import (
    evaluate_batches,
    make_train_step,
    reshape_for_accum,
    split_model,
)

FINAL_FILE = "final.json"
CURVES_FILE = "curves.png"
RUN_MARKERS = (RUN_FILE, CKPT_SUBDIR, METRICS_FILE, FINAL_FILE)
EXIT_PREEMPTED = 75  # train.py's exit code after a SIGTERM / SIGINT checkpoint (EX_TEMPFAIL: run it again)
EXIT_INTERRUPTED = 130  # a second signal: exit at once


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


class Preempted(TrainError):
    """SIGTERM / SIGINT: a checkpoint of ``step`` was saved in ``checkpoint``; ``--resume`` continues exactly."""

    def __init__(self, message: str, step: int, checkpoint: Path, signal_name: str):
        super().__init__(message)
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name


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
    already_finished: bool = False  # a finished run returned by --resume as it was (nothing was trained or written)
    extended_from: int | None = None
    init_from: dict | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers, e.g. no training step in this process, become ``None``)."""
        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "run_dir": self.run_dir, "model": describe_model(self.config.model), "step": self.step,
            "num_params": self.num_params, "final_eval": self.final_eval, "train_loss": num(self.train_loss),
            "tokens_per_s": num(self.tokens_per_s), "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds, "resumed_from": self.resumed_from,
            "extended_from": self.extended_from, "init_from": self.init_from,
        }

    @staticmethod
    def from_final(run_dir: Path, final: dict) -> TrainResult:
        """The result a finished run recorded in ``final.json``."""
        num = lambda x: float("nan") if x is None else float(x)
        try:
            return TrainResult(
                run_dir=str(run_dir), config=config_from_dict(final["config"]), step=int(final["step"]),
                num_params=int(final["num_params"]), final_eval=dict(final["final_eval"]),
                train_loss=num(final.get("train_loss")), tokens_per_s=num(final.get("tokens_per_s")),
                train_seconds=float(final.get("train_seconds") or 0.0), wall_seconds=0.0,
                resumed_from=final.get("resumed_from"), already_finished=True,
                extended_from=final.get("extended_from"), init_from=final.get("init_from"))
        except (KeyError, TypeError, ValueError) as err:
            raise RunDirError(f"{run_dir / FINAL_FILE} is not a final.json written by train.py ({err}); move it "
                              "away to resume the run") from None


def read_final(run_dir: str | Path) -> dict | None:
    """``final.json`` of a finished run, ``None`` when the run is not finished."""
    path = Path(run_dir) / FINAL_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        int(data["step"])
        return data
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunDirError(f"{path} is unreadable ({type(err).__name__}); move it away to resume the run") from None


# ---- run directory ---------------------------------------------------------------------------------------------------
def holds_run(run_dir: str | Path) -> bool:
    p = Path(run_dir)
    return p.is_dir() and any((p / m).exists() for m in RUN_MARKERS)


def check_run_dir(run_dir: str | Path, config: RunConfig, *, resume: bool, overwrite: bool) -> None:
    """Side-effect-free refusal checks (call them for every run before starting any)."""
    p = Path(run_dir)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other")
    blocker = not_a_directory(p)
    if blocker is not None:
        raise RunDirError(f"cannot use {p} as a run directory: {blocker} is a file, not a directory; choose another "
                          "train.out_dir (runs go to <train.out_dir>/main and /baseline)")
    if p.exists() and holds_run(p):
        if resume:
            final = read_final(p)
            stored = read_run_file(p)
            if stored is not None:
                check_same_config(stored, config, where=f"run {p}", ignore=RESUMABLE_CHANGES + ("train.steps",))
                check_steps(p, stored.train.steps, config.train.steps, final)
            if final is None or config.train.steps > int(final["step"]):
                _check_writable(p, "--resume writes checkpoints and metrics there")
            return
        if overwrite:
            if not (p / RUN_FILE).exists():
                raise RunDirError(f"{p} looks like a damaged run (no {RUN_FILE}); refusing to delete it with "
                                  "--overwrite: remove it by hand or pick another train.out_dir")
            _check_writable(p, "--overwrite replaces the run there")
            return
        raise RunDirError(f"output directory {p} already holds a run; pass --resume to continue it or "
                          "--overwrite to replace it (or choose another train.out_dir)")
    if p.exists() and any(p.iterdir()):
        raise RunDirError(f"output directory {p} is not empty and holds no mc_jax run; refusing to write into it "
                          "(choose another train.out_dir)")
    _check_writable(p, "a new run writes its files there")


def _check_writable(p: Path, why: str) -> None:
    reason = unwritable_reason(p)
    if reason is not None:
        raise RunDirError(f"cannot write to {p} ({reason}); {why}. Choose a writable train.out_dir (copy the run "
                          "there first to continue it: cp -r <out_dir> <new_out_dir>).")


def check_steps(run_dir: Path, stored_steps: int, requested: int, final: dict | None) -> None:
    """``train.steps`` may change on ``--resume`` only to extend a finished run (see the module docstring)."""
    if final is not None:
        done = int(final["step"])
        if requested < done:
            raise RunDirError(f"run {run_dir} finished {done} steps; train.steps={requested} cannot shorten it (to "
                              f"extend it pass train.steps larger than {done})")
        return
    if requested != stored_steps:
        raise RunDirError(f"run {run_dir} is not finished (planned for {stored_steps} steps): resume it with its own "
                          f"train.steps={stored_steps} first; train.steps may change only to extend a finished run")


def check_init_from(source: RunConfig, target: RunConfig, where: Path) -> None:
    """The new model may differ from the checkpoint's only in the caching settings of its mixers."""
    diff = config_diff(source, target, sections=("model.",))
    other = [d for d in diff if d.split(":")[0] not in INIT_FROM_CHANGES]
    kinds = [(source.model.layer_pattern, target.model.layer_pattern)]
    swapped = [(a, b) for pa, pb in kinds for a, b in zip(pa, pb) if a != b]
    if len(source.model.layer_pattern) != len(target.model.layer_pattern) or any(
            a not in CACHING_KINDS or b not in CACHING_KINDS for a, b in swapped):
        other.append(f"layer kinds {list(source.model.layer_pattern)} -> {list(target.model.layer_pattern)} (only "
                     f"{' <-> '.join(CACHING_KINDS)} may change)")
    if other:
        raise CheckpointError(f"--init-from {where}: the new model may differ from the checkpoint's only in its "
                              f"caching settings ({', '.join(k.split('.')[-1] for k in INIT_FROM_CHANGES)}); these "
                              "differ too:\n  " + "\n  ".join(other))


def _prepare_run_dir(run_dir: Path, config: RunConfig, *, resume: bool, overwrite: bool,
                     session: dict[str, Any], run_extra: dict | None = None) -> None:
    check_run_dir(run_dir, config, resume=resume, overwrite=overwrite)
    if overwrite and holds_run(run_dir):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.train.task.tokenizer != "byte" and not (run_dir / TOKENIZER_FILE).exists():
        shutil.copyfile(config.train.task.tokenizer, run_dir / TOKENIZER_FILE)  # eval reads it from the run
    if not (run_dir / RUN_FILE).exists():
        write_run_file(run_dir, config, public(session), extra=run_extra)
    else:
        record_session(run_dir, public(session))


LAST_ERROR_LOG: list[Path] = []  # the error log of the newest run of this process (see train.cli's hooks)


class _LibraryErrors:
    """While a run is active: the storage libraries' ERROR log records (orbax logs whole tracebacks through absl)
    go to ``<run>/mc_jax_errors.log`` instead of the console; the run's own error message says what happened."""

    def __init__(self, run_dir: Path):
        import logging

        self.handler = logging.FileHandler(run_dir / ERROR_LOG, delay=True)
        self.handler.setLevel(logging.ERROR)
        self.handler.handleError = lambda record: None  # e.g. a full disk: drop the record, never print
        self.logger = logging.getLogger("absl")
        self.logger.addHandler(self.handler)
        self.console = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
        try:
            from absl import logging as absl_logging

            self.console.append(absl_logging.get_absl_handler())
        except ImportError:  # pragma: no cover
            pass
        self.levels = [h.level for h in self.console]
        for h in self.console:
            h.setLevel(logging.CRITICAL)
        LAST_ERROR_LOG[:] = [run_dir / ERROR_LOG]

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        for h, level in zip(self.console, self.levels):
            h.setLevel(level)
        try:
            self.handler.close()
        except OSError:
            pass


class _StopRequest:
    """SIGTERM / SIGINT handlers for the duration of a run (main thread, single process only)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, stream: IO[str], label: str):
        self.signal: int | None = None
        self.stream, self.label = stream, label
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            self.stream.write(f"\n{self.label}{name} again: exiting now (the committed checkpoints are intact)\n")
            self.stream.flush()
            os._exit(EXIT_INTERRUPTED)
        self.signal = signum
        self.stream.write(f"\n{self.label}{name} received: saving a checkpoint at the end of this step (send it "
                          "again to exit at once)\n")
        self.stream.flush()

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


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


# ---- the loop --------------------------------------------------------------------------------------------------------
def _load_init(init_from: str | os.PathLike[str], config: RunConfig, params: Any) -> tuple[Any, dict]:
    """Parameters of ``config``'s model taken from the checkpoint at ``init_from`` (see :func:`check_init_from`)."""
    src_run, src_step = locate_checkpoint(init_from)
    reader = Checkpointer(src_run, read_only=True)
    try:
        steps = reader.all_steps()
        step = src_step if src_step is not None else (steps[-1] if steps else None)
        if step is None or step not in steps:
            raise CheckpointError(f"--init-from {init_from}: no committed checkpoint"
                                  f"{'' if step is None else f' for step {step}'} in {reader.directory}")
        source = reader.read_config(step)
        check_init_from(source, config, reader.step_dir(step))
        _, source_params, _ = split_model_abstract(source)
        restored, _, _ = reader.restore(step, source_params)
    finally:
        reader.close()
    merged, fresh, unused = transfer_params(restored, params)
    return merged, {"checkpoint": str(reader.step_dir(step)), "step": step, "fresh": fresh, "unused": unused}


def split_model_abstract(config: RunConfig):
    return split_model(abstract_model(config.model))


def _storage_error(run_dir: Path, err: OSError) -> TrainError:
    import traceback

    log = append_log(run_dir / ERROR_LOG, "==== writing run files\n" + "".join(
        traceback.format_exception(type(err), err, err.__traceback__)))
    return TrainError(f"cannot write to {run_dir}: {describe_storage_error(err)} "
                      f"({getattr(err, 'filename', '') or ''}).\nThe committed checkpoints are intact; free space (or "
                      f"fix the directory) and continue with --resume.{f' Details: {log}' if log else ''}")


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
    resume_from_step: int | None = None,
    init_from: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train ``config`` in ``run_dir``; see the module docstring. Raises :class:`RunDirError`,
    :class:`~mc_jax.train.data.DataError`, :class:`~mc_jax.train.checkpoint.CheckpointError`,
    :class:`NonFiniteLossError`, :class:`Preempted` or :class:`TrainError`; nothing committed is lost in any case.

    ``progress``: show a progress bar (log lines are printed to ``stream`` either way); ``job``: the bar of a job of
    several runs (its ETA covers them all; the caller closes it), else the run gets its own. ``plot``: write
    ``<run_dir>/curves.png`` (loss and accuracy curves; needs matplotlib) at the end.
    ``resume_from_step``: with ``resume``, continue from this committed checkpoint rather than the newest (e.g. the
    newest intact one after a damaged checkpoint); later checkpoints are moved to ``checkpoints_set_aside/``.
    ``init_from``: a checkpoint (run, ``checkpoints`` or step directory) whose parameters start this new run.
    """
    wall0 = time.perf_counter()
    stream = stream or sys.stderr
    tc = config.train
    run_dir = Path(run_dir).absolute()
    if init_from is not None and resume:
        raise RunDirError("--init-from starts a new run; --resume continues one: pass only one of them")
    if resume_from_step is not None and not resume:
        raise RunDirError("--resume-from-step needs --resume")
    check_run_dir(run_dir, config, resume=resume, overwrite=overwrite)
    final_before = read_final(run_dir) if resume and run_dir.is_dir() else None
    if final_before is not None and tc.steps <= int(final_before["step"]) and resume_from_step is None:
        result = TrainResult.from_final(run_dir, final_before)
        if job is not None:
            job.start_run(label, done_steps=tc.steps)  # nothing to do: off the job's total
        if jax.process_index() == 0:  # even without progress output: it says why nothing happened
            note = (f"{label}run {run_dir} is finished ({result.step} steps): left as it is. To train it "
                    f"further pass --resume train.steps=<more than {result.step}>.")
            job.message(note) if job is not None else stream.write(note + "\n")
        return result
    reopened = final_before is not None  # a finished run trained further (extension, or --resume-from-step)
    extension = reopened and tc.steps > int(final_before["step"])
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
    init_info = None
    if init_from is not None:  # fresh optimizer state (AdamW's zeros do not depend on the parameter values)
        params, init_info = _load_init(init_from, config, params)

    # Read the checkpoint before touching the directory: a bad checkpoint leaves everything as it was.
    start, data_state, resumed_from, stats, set_aside = 0, None, None, {}, []
    if resume and (run_dir / CKPT_SUBDIR).is_dir():
        reader = Checkpointer(run_dir, read_only=True)
        try:
            committed = reader.all_steps()
            set_aside = [s for s in reader.saved_steps() if s not in committed]  # cut off before their manifest
            if resume_from_step is not None:
                if resume_from_step not in committed:
                    raise CheckpointError(f"--resume-from-step {resume_from_step}: no committed checkpoint of that "
                                          f"step in {reader.directory}; committed: {committed}")
                latest = resume_from_step
            else:
                latest = committed[-1] if committed else None
            if latest is not None:
                set_aside += [s for s in committed if s > latest]
                stored = reader.read_config(latest)
                check_same_config(stored, config, where=f"checkpoint {reader.step_dir(latest)}",
                                  ignore=RESUMABLE_CHANGES + ("train.steps",))  # steps: check_run_dir
                params, opt_state, meta = reader.restore(latest, params, opt_state)
                start, data_state, resumed_from = latest, meta.get("data_state"), latest
                stats = meta.get("train_stats") or {}
        finally:
            reader.close()
    sync_processes("mc_jax.train: checkpoint read")  # nobody touches the directory before every process has read it
    session = session_info(config, start_step=start)
    if primary:
        _prepare_run_dir(run_dir, config, resume=resume, overwrite=overwrite, session=session,
                         run_extra={"init_from": init_info} if init_info else None)
        if set_aside:
            where = Checkpointer.move_aside(run_dir, sorted(set_aside))
            stream.write(f"{label}checkpoints {sorted(set_aside)} (uncommitted or after step {start}) moved "
                         f"to {where}\n")
        if reopened:  # the run is no longer finished: keep its old result, record the new plan
            os.replace(run_dir / FINAL_FILE, run_dir / f"final.step{final_before['step']}.json")
            write_run_file(run_dir, config)
    sync_processes("mc_jax.train: run directory ready")
    library_errors = _LibraryErrors(run_dir)
    ckpt = Checkpointer(run_dir, keep=tc.keep)
    logger = (MetricsLogger(run_dir, resume_step=start if resume else None, final_step=tc.steps) if primary
              else _NullLogger())
    own_bar = job is None
    bar = job if job is not None else JobProgress(tc.steps - start, enabled=progress and primary, stream=stream)
    if job is not None:
        bar.start_run(label, done_steps=start)
    say = bar.message if primary else (lambda text: None)
    where = f"resumed from step {start}" if resumed_from is not None else "from scratch"
    if extension:
        where = f"extending the finished run from step {start}"
    say(f"{label}{describe_model(config.model)}: {num_params:,} params, {data.description}; "
        f"{tc.steps} steps x {tc.batch_size} seqs ({where}) -> {run_dir}")
    if init_info:
        say(f"{label}parameters from {init_info['checkpoint']}; new (initialised fresh): "
            f"{init_info['fresh'] or 'none'}; not used: {init_info['unused'] or 'none'}")
    if primary and not logger.tensorboard_enabled and start == 0:
        say(f"{label}tensorboardX is not installed (pip install 'mc_jax[tensorboard]'): metrics go to "
            f"{logger.path.name} only")

    step_fn = make_train_step(graphdef, rest, tx, tc.accum, shard=shard, donate=shard is not None)
    it = data.iterator(data_state)
    losses: dict[int, float] = {}
    timed_steps, timed_seconds = int(stats.get("timed_steps", 0)), float(stats.get("timed_seconds", 0.0))
    last_loss = float(stats.get("last_loss", float("nan")))
    tokens_per_s = timed_steps * tc.tokens_per_step / timed_seconds if timed_seconds > 0 else float("nan")
    last_saved = start if resumed_from is not None else None
    last_save_time = time.monotonic()
    stop = _StopRequest(stream, label)

    def do_eval(step: int) -> dict[str, float]:
        metrics = evaluate_batches(graphdef, params, rest, data.eval_batches, shard=shard)
        logger.log(step, "eval", metrics)
        return metrics

    def save(step: int) -> None:
        nonlocal last_saved, last_save_time
        train_stats = {"timed_steps": timed_steps, "timed_seconds": timed_seconds,
                       "last_loss": last_loss if _finite(last_loss) else None}
        ckpt.save(step, params, opt_state, data_state=it.get_state(), config=config,
                  extra={"train_stats": train_stats})
        last_saved, last_save_time = step, time.monotonic()

    failed = True
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
            due = tc.ckpt_every and step % tc.ckpt_every == 0
            due = due or (tc.ckpt_minutes and time.monotonic() - last_save_time >= 60 * tc.ckpt_minutes)
            if (due or stop.signal is not None) and step < tc.steps:
                save(step)
            if stop.signal is not None:
                ckpt.wait()
                raise Preempted(f"{stop.name}: checkpoint of step {step} saved in {ckpt.step_dir(step)}",
                                step, ckpt.step_dir(step), stop.name)
        if ckpt.latest_step() != tc.steps:
            save(tc.steps)
        final = do_eval(tc.steps)
        ckpt.wait()
        failed = False
    except OSError as err:  # e.g. metrics.jsonl on a full disk
        raise _storage_error(run_dir, err) from None
    finally:
        stop.restore()
        if own_bar:
            bar.close()
        try:
            logger.close()
        except OSError:
            if not failed:
                raise
        try:
            ckpt.close()
        except CheckpointError:
            if not failed:
                raise
        finally:
            library_errors.close()

    result = TrainResult(
        run_dir=str(run_dir), config=config, step=tc.steps, num_params=num_params, final_eval=final,
        train_loss=last_loss, tokens_per_s=tokens_per_s, train_seconds=timed_seconds,
        wall_seconds=time.perf_counter() - wall0, resumed_from=resumed_from, losses=losses,
        extended_from=int(final_before["step"]) if extension else None,
        init_from=init_info or _stored_init(run_dir),
    )
    if primary:
        try:
            write_json_atomic(run_dir / FINAL_FILE, {**result.summary(), "config": config_to_dict(config)})
        except OSError as err:
            raise _storage_error(run_dir, err) from None
        record_session(run_dir, finish_session(session, end_step=tc.steps))
        if plot:
            from mc_jax.plots import plot_training_curves

            plot_training_curves({describe_model(config.model): read_metrics(logger.path)}, run_dir / CURVES_FILE,
                                 title=f"{run_dir.name}: {describe_model(config.model)}, {data.description}")
    sync_processes("mc_jax.train: done")
    say(f"{label}done: eval loss {final['loss']:.4f}, accuracy {final['accuracy']:.2%}, "
        f"exact match {final['exact_match']:.2%} ({tokens_per_s:,.0f} tok/s)")
    return result


def _stored_init(run_dir: Path) -> dict | None:
    """The ``init_from`` record of ``run.json`` (a resumed run that started from a checkpoint)."""
    try:
        return json.loads((run_dir / RUN_FILE).read_text()).get("init_from")
    except (OSError, ValueError, AttributeError):
        return None


__all__ = [
    "CURVES_FILE", "EXIT_INTERRUPTED", "EXIT_PREEMPTED", "FINAL_FILE", "NonFiniteLossError", "Preempted",
    "RunDirError", "TrainError", "TrainResult", "check_init_from", "check_run_dir", "check_steps", "holds_run",
    "read_final", "train", "CheckpointError", "SET_ASIDE_SUBDIR",
]
