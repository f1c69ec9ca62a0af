"""Metrics sinks (JSONL, TensorBoard when ``tensorboardX`` is installed) and a dependency-free progress bar."""

from __future__ import annotations

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
        return str(value)  # "nan" / "inf": strict JSON has no NaN
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
    """A ``tensorboardX.SummaryWriter`` or ``None`` when tensorboardX is not installed (no new dependency)."""
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


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class ProgressBar:
    """``label [#####.....] step/total loss tok/s ETA``: redrawn in place (``\\r``) on a terminal, or printed as a
    line about every 10% of the steps otherwise (logs stay readable)."""

    def __init__(self, total: int, *, start: int = 0, label: str = "", stream: IO[str] | None = None,
                 enabled: bool = True, width: int = 24):
        self.total, self.start, self.label, self.width = total, start, label, width
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_draw = 0.0
        self._next_line = start + 1
        self._line_len = 0

    def update(self, step: int, loss: float, tokens_per_s: float, eta_s: float, extra: str = "") -> None:
        """Redraw for ``step`` (``tokens_per_s`` / ``eta_s`` may be NaN while unknown)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        frac = step / max(self.total, 1)
        fill = int(frac * self.width)
        bar = "#" * fill + "." * (self.width - fill)
        tps = f"{tokens_per_s:,.0f}" if tokens_per_s == tokens_per_s else "?"
        text = (f"{self.label}[{bar}] {step}/{self.total} loss {loss:.4f} {tps} tok/s ETA {_fmt_time(eta_s)}"
                f"{(' ' + extra) if extra else ''}")
        if self.tty:
            if now - self._last_draw >= 0.1 or step == self.total:
                pad = max(self._line_len - len(text), 0)
                self.stream.write("\r" + text + " " * pad)
                self.stream.flush()
                self._line_len = len(text)
                self._last_draw = now
        elif step >= self._next_line or step == self.total:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._next_line = step + max(self.total // 10, 1)

    def message(self, text: str) -> None:
        """Print a line without breaking the bar."""
        if not self.enabled:
            return
        if self.tty and self._line_len:
            self.stream.write("\r" + " " * self._line_len + "\r")
            self._line_len = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._line_len:
            self.stream.write("\n")
            self.stream.flush()
            self._line_len = 0


__all__ = ["METRICS_FILE", "MetricsLogger", "ProgressBar", "read_metrics", "tensorboard_writer"]
