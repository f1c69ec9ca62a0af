"""Checkpoints with orbax ``CheckpointManager``: params, optimizer state, step, data-iterator state and config.

Layout of a run directory::

    <run_dir>/run.json                 the run's config (written once, atomically, when the run starts) and one record
                                       per training session: git commit, versions, devices, mesh, command, times
    <run_dir>/checkpoints/<step>/      one orbax checkpoint per saved step: items ``params``, ``opt_state``, ``meta``
    <run_dir>/metrics.jsonl            one JSON record per logged step / evaluation
    <run_dir>/final.json               final metrics (written at the end)

``meta`` is JSON: ``{"step", "data_state", "config", "format"}``. Saves are asynchronous (orbax writes to a temporary
directory and renames it when complete), so a process killed mid-save leaves the previous checkpoints intact; the
partial one is ignored and removed by the next manager. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding

from mc_jax.models.checks import all_finite

from mc_jax.train.config import RunConfig, config_diff, config_from_dict, config_to_dict

FORMAT = "mc_jax.train/1"
CKPT_SUBDIR = "checkpoints"
RUN_FILE = "run.json"
TOKENIZER_FILE = "tokenizer.json"  # a text run's BPE tokenizer, copied into the run directory


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
            key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
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
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoints in {self.run_dir} (expected a {CKPT_SUBDIR}/ directory written "
                                  "by train.py)")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=1, create=not read_only, read_only=read_only,
            cleanup_tmp_directories=not read_only, enable_async_checkpointing=not read_only)
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
                "params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()})
        except Exception as err:  # orbax raises assorted errors for unreadable directories
            raise CheckpointError(f"cannot open the checkpoint directory {self.directory}: {err}") from err

    # ---- queries ---------------------------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    # ---- save ------------------------------------------------------------------------------------------------------
    def save(self, step: int, params: Any, opt_state: Any, *, data_state: dict | None, config: RunConfig,
             extra: dict | None = None) -> None:
        """Start an asynchronous save of ``step`` (returns once the arrays are copied; see :meth:`wait`)."""
        meta = {"format": FORMAT, "step": int(step), "data_state": data_state, "config": config_to_dict(config),
                **(extra or {})}
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # ---- restore ---------------------------------------------------------------------------------------------------
    def _corrupt(self, step: int, err: BaseException | str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {self.step_dir(step)} is corrupted or partial ({err}). Nothing was changed; delete that "
            "directory to fall back to an earlier checkpoint, or start over with --overwrite.")

    def read_meta(self, step: int) -> dict:
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as err:
            raise self._corrupt(step, err) from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
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

        Returns ``(params, opt_state or None, meta)``. Raises :class:`CheckpointError` for a corrupted, partial or
        mismatched checkpoint.
        """
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
def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_run_file(run_dir: str | os.PathLike[str], config: RunConfig, session: dict[str, Any] | None = None) -> None:
    """``run.json``: the config and, when given, the session record (:mod:`mc_jax.train.runinfo`) as the run's
    first entry of ``sessions``."""
    data: dict[str, Any] = {"format": FORMAT, "config": config_to_dict(config)}
    if session is not None:
        data["sessions"] = [session]
    write_json_atomic(Path(run_dir) / RUN_FILE, data)


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
        if data.get("format") != FORMAT:
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


__all__ = [
    "CKPT_SUBDIR", "FORMAT", "RUN_FILE", "TOKENIZER_FILE", "CheckpointError", "Checkpointer", "check_same_config",
    "read_run_file", "record_session",
    "write_json_atomic", "write_run_file",
]
