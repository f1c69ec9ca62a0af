"""Checkpoints with orbax ``CheckpointManager``: params, optimizer state, step, data-iterator state and config.

Layout of a run directory::

    <run_dir>/run.json                 the run's config (written once, atomically, when the run starts) and one record
                                       per training session: git commit, versions, devices, mesh, command, times
    <run_dir>/checkpoints/<step>/      one orbax checkpoint per saved step: items ``params``, ``opt_state``, ``meta``
    <run_dir>/checkpoints/<step>/mc_manifest.json   size and CRC-32 of every file of that checkpoint
    <run_dir>/metrics.jsonl            one JSON record per logged step / evaluation
    <run_dir>/final.json               final metrics (written once, atomically, when the run completes)
    <run_dir>/mc_jax_errors.log        storage-library details of refused checkpoints (the console gets a summary)

``meta`` is JSON: ``{"step", "data_state", "config", "format", "train_stats"}``. Saves are asynchronous (orbax writes
to a temporary directory and renames it when complete), so a process killed mid-save leaves the previous checkpoints
intact; the partial one is ignored and removed by the next manager. Only the newest ``keep`` checkpoints are kept.

Integrity. When orbax has written every file of a checkpoint, and before it renames the temporary directory into
place, the manifest is written into it (orbax's post-finalisation callback), so it is part of the atomic rename. A
checkpoint of this format without a manifest (its manifest could not be written) is *uncommitted*: ignored like
orbax's partial saves, and set aside by the next ``--resume``. Every restore (``--resume``, ``--init-from``,
``eval.py``) first verifies the
manifest; a checkpoint with a missing, truncated or changed file is refused with a short message naming the file
and the newest intact checkpoint is offered (``--resume-from-step N``), never used silently. CRC-32 (zlib) costs
about as much as reading the files (measured 330 MB/s for CRC-32 vs 240 MB/s for SHA-256 on a loaded CPU).
Checkpoints of the previous format (``mc_jax.train/1``, no manifest) are read unverified.
"""

from __future__ import annotations

import json
import os
import traceback
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import SingleDeviceSharding

from mc_jax.files import append_log, describe_storage_error, write_json_atomic
from mc_jax.models.checks import all_finite
from mc_jax.train.config import RunConfig, config_diff, config_from_dict, config_to_dict

FORMAT = "mc_jax.train/2"  # /2: committed by a manifest
LEGACY_FORMATS = ("mc_jax.train/1",)  # readable, without integrity check
CKPT_SUBDIR = "checkpoints"
SET_ASIDE_SUBDIR = "checkpoints_set_aside"  # later checkpoints moved away by --resume-from-step / uncommitted ones
RUN_FILE = "run.json"
TOKENIZER_FILE = "tokenizer.json"  # a text run's BPE tokenizer, copied into the run directory
MANIFEST = "mc_manifest.json"
MANIFEST_FORMAT = "mc_jax.manifest/1"
ERROR_LOG = "mc_jax_errors.log"
_CHUNK = 1 << 22


def file_crc32(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


# orbax rewrites its step metadata (timestamps) when it commits, after the manifest is written; it holds no arrays
UNLISTED = (MANIFEST, "_CHECKPOINT_METADATA")


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and str(p.relative_to(step_dir)) not in UNLISTED)


def write_manifest(step_dir: str | os.PathLike[str], step: int) -> None:
    """Record size and CRC-32 of every file of a finalised checkpoint (atomically; the commit point)."""
    step_dir = Path(step_dir)
    files = {str(p.relative_to(step_dir)): {"size": p.stat().st_size, "crc32": file_crc32(p)} for p in _files(step_dir)}
    write_json_atomic(step_dir / MANIFEST, {"format": MANIFEST_FORMAT, "step": int(step), "files": files})


def manifest_problem(step_dir: str | os.PathLike[str]) -> str | None:
    """``None`` when every file listed in the manifest is present and unchanged, else a short description naming
    the first bad file. A missing manifest is reported as ``"uncommitted"``."""
    step_dir = Path(step_dir)
    path = step_dir / MANIFEST
    if not path.exists():
        return "uncommitted"
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(manifest.get("format"))
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its manifest {MANIFEST} is unreadable ({type(err).__name__})"
    for name, entry in sorted(files.items()):
        f = step_dir / name
        if not f.is_file():
            return f"file {name} is missing"
        if f.stat().st_size != entry["size"]:
            return f"file {name} has {f.stat().st_size} bytes, {entry['size']} when saved"
        if file_crc32(f) != entry["crc32"]:
            return f"file {name} has changed since it was saved (checksum mismatch)"
    return None


def sync_processes(name: str) -> None:
    """A barrier of every process of a multi-process run (nothing in a single-process one)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted, partial or written for a different config."""


def _abstract(tree: Any) -> Any:
    """Restore targets with an explicit sharding: arrays on a mesh keep their ``NamedSharding``, so a checkpoint
    written on one mesh restores directly into the shards of the current one (each process reads only its own
    shards); anything else goes to the default device, whatever topology wrote the checkpoint."""
    def target(x):
        sharding = getattr(x, "sharding", None)
        if sharding is None:  # e.g. a ShapeDtypeStruct from eval_shape: onto the default device
            sharding = SingleDeviceSharding(jax.local_devices()[0])
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(target, tree)


def _shape_problems(saved: Any, expected: Any) -> list[str]:
    """Differences between the stored tree metadata and the arrays a config expects (paths, shapes, dtypes)."""
    def flat(tree):
        out = {}
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            key = jax.tree_util.keystr(path, simple=True, separator="/")
            out[key] = (tuple(getattr(leaf, "shape", ())), str(getattr(leaf, "dtype", "?")))
        return out

    a, b = flat(saved), flat(expected)
    problems = [f"{k}: missing in the checkpoint" for k in sorted(set(b) - set(a))]
    problems += [f"{k}: in the checkpoint but not in the model" for k in sorted(set(a) - set(b))]
    problems += [f"{k}: shape {a[k][0]} in the checkpoint, {b[k][0]} expected" for k in sorted(set(a) & set(b))
                 if a[k][0] != b[k][0]]
    return problems


class Checkpointer:
    """A thin wrapper over ``ocp.CheckpointManager`` for one run directory."""

    def __init__(self, run_dir: str | os.PathLike[str], *, keep: int = 2, read_only: bool = False):
        self.run_dir = Path(run_dir).absolute()
        self.directory = self.run_dir / CKPT_SUBDIR
        self._pending: int | None = None  # step whose manifest the post-finalisation callback writes
        self._commit_error: BaseException | None = None
        self._verified: set[int] = set()  # steps whose files matched their manifest (read-only use)
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoints in {self.run_dir} (expected a {CKPT_SUBDIR}/ directory written "
                                  "by train.py)")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=1, create=not read_only, read_only=read_only,
            cleanup_tmp_directories=not read_only, enable_async_checkpointing=not read_only,
            async_options=None if read_only else ocp.AsyncOptions(post_finalization_callback=self._commit))
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
                "params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()})
        except Exception as err:  # orbax raises assorted errors for unreadable directories
            raise CheckpointError(f"cannot open the checkpoint directory {self.directory}: {err}") from err

    # ---- queries ---------------------------------------------------------------------------------------------------
    def saved_steps(self) -> list[int]:
        """Every step orbax has finalised, committed or not."""
        return sorted(self.manager.all_steps())

    def all_steps(self) -> list[int]:
        """Committed steps (with a manifest, or of the legacy format); uncommitted ones are left out."""
        return [s for s in self.saved_steps() if not self.uncommitted(s)]

    def uncommitted(self, step: int) -> bool:
        """Finalised by orbax but without a manifest (cut off before its commit), and not a legacy checkpoint."""
        if (self.step_dir(step) / MANIFEST).exists():
            return False
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception:  # unreadable: the verification reports it as damaged  # noqa: BLE001
            return False
        return not (isinstance(meta, dict) and meta.get("format") in LEGACY_FORMATS)

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def verify(self, step: int) -> None:
        """Refuse ``step`` when a file differs from its manifest (:class:`CheckpointError` naming the file and the
        newest intact earlier checkpoint)."""
        if step in self._verified:
            return
        problem = manifest_problem(self.step_dir(step))
        if problem == "uncommitted" and not self.uncommitted(step):
            return  # legacy format: nothing to verify against
        if problem is not None:
            raise self._damaged(step, problem)
        self._verified.add(step)

    def newest_intact(self, below: int | None = None) -> int | None:
        """The newest committed step (below ``below``) whose files match their manifest."""
        for step in reversed(self.all_steps()):
            if below is not None and step >= below:
                continue
            try:
                self.verify(step)
            except CheckpointError:
                continue
            return step
        return None

    def _damaged(self, step: int, problem: str) -> CheckpointError:
        previous = self.newest_intact(below=step)
        offer = (f"The newest intact checkpoint is step {previous}: resume from it with --resume "
                 f"--resume-from-step {previous} (later checkpoints are set aside in {SET_ASIDE_SUBDIR}/), or "
                 f"evaluate it with eval.py {self.run_dir} --step {previous}."
                 if previous is not None else "No earlier intact checkpoint exists; start over with --overwrite.")
        return CheckpointError(f"checkpoint {self.step_dir(step)} is damaged: {problem}. Nothing was changed.\n"
                               f"{offer}")

    @staticmethod
    def move_aside(run_dir: str | os.PathLike[str], steps: list[int]) -> Path:
        """Move the step directories ``steps`` to ``<run>/checkpoints_set_aside/`` (kept, out of orbax's way)."""
        run_dir = Path(run_dir)
        target = run_dir / SET_ASIDE_SUBDIR
        target.mkdir(exist_ok=True)
        for step in steps:
            dest, n = target / str(step), 1
            while dest.exists():
                dest, n = target / f"{step}.{n}", n + 1
            os.replace(run_dir / CKPT_SUBDIR / str(step), dest)
        return target

    # ---- save ------------------------------------------------------------------------------------------------------
    def save(self, step: int, params: Any, opt_state: Any, *, data_state: dict | None, config: RunConfig,
             extra: dict | None = None) -> None:
        """Start an asynchronous save of ``step`` (returns once the arrays are copied; see :meth:`wait`)."""
        meta = {"format": FORMAT, "step": int(step), "data_state": data_state, "config": config_to_dict(config),
                **(extra or {})}
        self._raise_commit_error()
        try:
            self.manager.wait_until_finished()  # the previous save and its manifest
            self._raise_commit_error()
            # every process has finished the previous save's background commit (whose barriers would otherwise
            # pair with this save's: "sync_global_devices name mismatch ('CheckpointManager:save_start')" seen
            # once in a loaded two-process CI run) before any of them starts this one
            sync_processes(f"mc_jax.checkpoint: save {int(step)}")
            self._pending = int(step)
            self.manager.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta)), force=True)
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001
            raise self._save_error(step, err) from None

    def _commit(self) -> None:
        """orbax's post-finalisation callback, run after every file is written and before the temporary directory is
        renamed into place (orbax 0.12): the manifest goes into the temporary directory, so it is renamed with it."""
        step, self._pending = self._pending, None
        if step is None or jax.process_index() != 0:
            return
        try:
            tmp = sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
            write_manifest(tmp[-1] if tmp else self.step_dir(step), step)
        except BaseException as err:  # surfaced by the next save / wait as a clear error  # noqa: BLE001
            self._commit_error = err

    def _raise_commit_error(self) -> None:
        if self._commit_error is not None:
            err, self._commit_error = self._commit_error, None
            raise self._save_error(None, err)

    def _save_error(self, step: int | None, err: BaseException) -> CheckpointError:
        log = self.log_details(f"saving checkpoint {step if step is not None else ''}", err)
        what = describe_storage_error(err)
        latest = self.all_steps()
        kept = f"the committed checkpoints ({latest}) are intact" if latest else "no checkpoint was committed yet"
        return CheckpointError(f"cannot write a checkpoint to {self.directory}: {what}.\n{kept}; free space (or "
                               "fix the directory) and continue with --resume." + (f" Details: {log}" if log else ""))

    def log_details(self, what: str, err: BaseException) -> Path | None:
        """Append the full storage-library error to ``<run>/mc_jax_errors.log`` (best effort)."""
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        return append_log(self.run_dir / ERROR_LOG, f"==== {what}: {self.run_dir}\n{text}")

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001
            raise self._save_error(self._pending, err) from None
        self._raise_commit_error()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:  # a failed save already raised from wait()  # noqa: BLE001, S110
                pass

    # ---- restore ---------------------------------------------------------------------------------------------------
    def _corrupt(self, step: int, err: BaseException | str) -> CheckpointError:
        if isinstance(err, BaseException):
            log = self.log_details(f"reading checkpoint {step}", err)
            short = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
            err = short + (f"; details in {log}" if log else "")
        previous = self.newest_intact(below=step)
        offer = (f"The newest intact checkpoint is step {previous}: --resume --resume-from-step {previous}, or "
                 f"eval.py {self.run_dir} --step {previous}." if previous is not None else
                 "Start over with --overwrite.")
        return CheckpointError(f"checkpoint {self.step_dir(step)} is corrupted or partial ({err}). Nothing was "
                               f"changed.\n{offer}")

    def read_meta(self, step: int) -> dict:
        self.verify(step)
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as err:
            raise self._corrupt(step, err) from err
        if not isinstance(meta, dict) or meta.get("format") not in (FORMAT,) + LEGACY_FORMATS or "config" not in meta:
            raise self._corrupt(step, "its metadata is missing or not from mc_jax.train")
        if meta.get("step") != step:
            raise self._corrupt(step, f"its metadata names step {meta.get('step')}")
        return meta

    def read_config(self, step: int) -> RunConfig:
        try:
            return config_from_dict(self.read_meta(step)["config"])
        except ValueError as err:
            if isinstance(err, CheckpointError):
                raise
            raise self._corrupt(step, err) from None

    def check_structure(self, step: int, item: str, expected: Any) -> None:
        """Refuse a checkpoint whose ``item`` arrays do not match ``expected`` (paths and shapes)."""
        try:
            saved = self.manager.item_metadata(step)[item]
        except Exception as err:
            raise self._corrupt(step, err) from err
        if saved is None:
            raise self._corrupt(step, f"item {item!r} is missing")
        saved = getattr(saved, "tree", saved)
        problems = _shape_problems(saved, expected)
        if problems:
            shown = "; ".join(problems[:6]) + (f"; ... ({len(problems)} in all)" if len(problems) > 6 else "")
            raise CheckpointError(f"checkpoint {self.step_dir(step)} does not fit this model's config: {shown}")

    def restore(self, step: int, params: Any, opt_state: Any | None = None) -> tuple[Any, Any, dict]:
        """Restore ``step`` onto the structure of ``params`` (and ``opt_state``; ``None`` skips it): arrays sharded
        on a mesh come back with the same shardings, whatever mesh wrote the checkpoint.

        Returns ``(params, opt_state or None, meta)``. Raises :class:`CheckpointError` for a damaged (manifest),
        corrupted, partial or mismatched checkpoint.
        """
        self.verify(step)
        meta = self.read_meta(step)
        self.check_structure(step, "params", params)
        items = {"params": ocp.args.StandardRestore(_abstract(params))}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(_abstract(opt_state))
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:
            raise self._corrupt(step, err) from err
        restored_opt = out.opt_state if opt_state is not None else None
        for name, tree in (("params", out.params), ("opt_state", restored_opt)):
            if tree is not None and not all_finite(tree):
                raise self._corrupt(step, f"{name} holds non-finite values")
        return out.params, restored_opt, meta


# ---- run.json --------------------------------------------------------------------------------------------------------
def write_run_file(run_dir: str | os.PathLike[str], config: RunConfig, session: dict[str, Any] | None = None, *,
                   extra: dict | None = None) -> None:
    """``run.json``: the run's config, ``extra`` records (e.g. ``init_from``) and, when given, the session record
    (:mod:`mc_jax.train.runinfo`) in ``sessions``, atomically. An extension rewrites the config and keeps the other
    records (earlier sessions included)."""
    path = Path(run_dir) / RUN_FILE
    kept: dict[str, Any] = {}
    if path.exists():
        try:
            kept = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("format", "config")}
        except (OSError, ValueError, AttributeError):
            kept = {}
    data: dict[str, Any] = {**kept, **(extra or {}), "format": FORMAT, "config": config_to_dict(config)}
    if session is not None:
        earlier = [s for s in kept.get("sessions", []) if s.get("start_time") != session.get("start_time")]
        data["sessions"] = earlier + [session]
    write_json_atomic(path, data)


def record_session(run_dir: str | os.PathLike[str], session: dict[str, Any]) -> None:
    """Store ``session`` in ``run.json``: replace the entry with the same ``start_time`` or append it (a resumed run
    adds one entry per session). The config in the file is never changed."""
    path = Path(run_dir) / RUN_FILE
    data = json.loads(path.read_text())
    sessions = [s for s in data.get("sessions", []) if s.get("start_time") != session.get("start_time")]
    data["sessions"] = sessions + [session]
    write_json_atomic(path, data)


def read_run_file(run_dir: str | os.PathLike[str]) -> RunConfig | None:
    """The config in ``run.json`` (``None`` when there is none); :class:`CheckpointError` when unreadable."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") not in (FORMAT,) + LEGACY_FORMATS:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
        return config_from_dict(data["config"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path} is unreadable or not written by mc_jax train.py ({err})") from None


def check_same_config(stored: RunConfig, requested: RunConfig, *, where: str, ignore: tuple[str, ...] = ()) -> None:
    """Refuse ``requested`` when it differs from ``stored`` outside ``ignore`` (a clear, complete message)."""
    diff = config_diff(stored, requested, ignore=ignore)
    if diff:
        raise CheckpointError(f"{where} was written with a different config; refusing to mix them:\n  "
                              + "\n  ".join(diff))


# ---- locating a checkpoint and starting from one (--init-from) -----------------------------------------------------
def locate_checkpoint(path: str | os.PathLike[str]) -> tuple[Path, int | None]:
    """``(run_dir, step or None)`` for a run directory, its ``checkpoints`` directory, or one step directory."""
    p = Path(path).absolute()
    if not p.exists():
        raise CheckpointError(f"checkpoint path {p} does not exist")
    if (p / CKPT_SUBDIR).is_dir():
        return p, None
    if p.name == CKPT_SUBDIR and p.is_dir():
        return p.parent, None
    if p.parent.name == CKPT_SUBDIR and p.name.isdigit():
        return p.parent.parent, int(p.name)
    raise CheckpointError(f"{p} is not a run directory, a checkpoints directory or a checkpoint step directory "
                          "written by train.py")


def _flat(tree: Any) -> dict[str, Any]:
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def transfer_params(source: Any, target: Any) -> tuple[Any, list[str], list[str]]:
    """``target``'s tree with every parameter that ``source`` has at the same path (shapes must match).

    Returns ``(params, fresh, unused)``: the paths kept from ``target`` (new parameters, e.g. a router) and the
    source paths the target does not have. A shape mismatch raises :class:`CheckpointError`.
    """
    src, dst = _flat(source), _flat(target)
    bad = [f"{k}: {tuple(np.shape(src[k]))} in the checkpoint, {tuple(np.shape(dst[k]))} in the new model"
           for k in sorted(set(src) & set(dst)) if np.shape(src[k]) != np.shape(dst[k])]
    if bad:
        raise CheckpointError("--init-from: parameters present in both models must have the same shapes:\n  "
                              + "\n  ".join(bad[:8]) + (f"\n  ... ({len(bad)} in all)" if len(bad) > 8 else ""))
    keys = list(_flat(target))
    leaves = [src[k].astype(dst[k].dtype) if k in src else dst[k] for k in keys]
    merged = jax.tree.unflatten(jax.tree.structure(target), leaves)
    return merged, sorted(set(dst) - set(src)), sorted(set(src) - set(dst))


__all__ = [
    "CKPT_SUBDIR",
    "ERROR_LOG",
    "FORMAT",
    "MANIFEST",
    "RUN_FILE",
    "TOKENIZER_FILE",
    "SET_ASIDE_SUBDIR",
    "CheckpointError",
    "Checkpointer",
    "check_same_config",
    "locate_checkpoint",
    "manifest_problem",
    "read_run_file",
    "record_session",
    "transfer_params",
    "write_json_atomic",
    "write_manifest",
    "write_run_file",
]
