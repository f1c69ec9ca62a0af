"""Metrics sinks (JSONL; TensorBoard event files when ``tensorboardX`` is installed, the ``tensorboard`` extra), the
job's tqdm progress bar and the loss-curve plot.

``metrics.jsonl`` holds one JSON object per line: ``{"step", "split": "train" | "eval", <metric>: number | null}``;
numbers are JSON numbers, a non-finite value is ``null``.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from mc_jax.files import write_text_atomic

METRICS_FILE = "metrics.jsonl"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN / inf: null (readers see "no value", never a string)
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (a torn last line from a killed process is skipped)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def tensorboard_writer(log_dir: str | os.PathLike[str]):
    """A ``tensorboardX.SummaryWriter`` or ``None`` when tensorboardX is not installed (``pip install
    'mc_jax[tensorboard]'``); view with ``tensorboard --logdir runs``."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir))


class MetricsLogger:
    """Appends one JSON record per call to ``<run_dir>/metrics.jsonl`` (flushed at once) and mirrors scalars to
    TensorBoard when available.

    ``resume_step``: records after that step (written by a run killed after its last checkpoint) are dropped first,
    atomically, so the file describes exactly the steps of the resumed run; so are evaluation records at
    ``final_step`` or later (the final evaluation, which the resumed run redoes: a kill between it and
    ``final.json`` leaves no duplicate).
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, resume_step: int | None = None,
                 final_step: int | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is not None and self.path.exists():
            def keep(r: dict) -> bool:
                step = int(r.get("step", 0))
                redone = final_step is not None and r.get("split") == "eval" and step >= final_step
                return step <= resume_step and not redone

            kept = [r for r in read_metrics(self.path) if keep(r)]  # (also drops a torn last line)
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file: IO[str] = open(self.path, "a")
        self.tb = tensorboard_writer(Path(run_dir) / "tb") if tensorboard else None

    @property
    def tensorboard_enabled(self) -> bool:
        return self.tb is not None

    def log(self, step: int, split: str, values: dict[str, Any]) -> None:
        record = {"step": int(step), "split": split, **{k: _jsonable(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(float(value)):
                    self.tb.add_scalar(f"{split}/{key}", float(value), step)

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()


class JobProgress:
    """One tqdm progress bar over every run of a job (``python train.py`` trains MC, then its baselines): its total
    is the steps all runs have to do, so its ETA covers the whole job, not only the current run.

    Log lines (:meth:`message`) are printed whether or not the bar is shown (``--no-progress`` hides the bar only).
    On a terminal the bar redraws in place; otherwise (a log file) it prints at most every 30 s.
    """

    def __init__(self, total_steps: int, *, enabled: bool = True, stream: IO[str] | None = None,
                 log_interval_s: float = 30.0):
        from tqdm.auto import tqdm

        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        # Not a terminal: tqdm renders into a sink and the meter is printed as a plain line every log_interval_s.
        self.bar = tqdm(total=total_steps, file=self.stream if self.tty else io.StringIO(), disable=not enabled,
                        unit="step", dynamic_ncols=self.tty, mininterval=0.1, smoothing=0.05, leave=True)
        self.log_interval_s = log_interval_s
        self._last_line = time.monotonic()
        self.label = ""

    @property
    def enabled(self) -> bool:
        return not self.bar.disable

    def start_run(self, label: str, done_steps: int = 0) -> None:
        """A run begins; ``done_steps`` it had already done (a resumed run) leave the job's total."""
        self.label = label.strip()
        self.bar.set_description_str(self.label.strip("[]"), refresh=False)
        if done_steps and self.bar.total is not None:
            self.bar.total = max(self.bar.total - done_steps, self.bar.n)
            self.bar.refresh()

    def update(self, loss: float, tokens_per_s: float) -> None:
        """One step done."""
        tps = f"{tokens_per_s:,.0f}" if math.isfinite(tokens_per_s) else "?"
        self.bar.set_postfix_str(f"loss {loss:.4f}, {tps} tok/s", refresh=False)
        self.bar.update(1)
        if self.enabled and not self.tty and time.monotonic() - self._last_line >= self.log_interval_s:
            self._line(str(self.bar))

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_line = time.monotonic()

    def message(self, text: str) -> None:
        """Print a log line without breaking the bar (always, also with the bar disabled)."""
        if self.enabled and self.tty:
            self.bar.write(text, file=self.stream)
        else:
            self._line(text)

    def close(self) -> None:
        self.bar.close()


__all__ = ["METRICS_FILE", "JobProgress", "MetricsLogger", "read_metrics", "tensorboard_writer"]
