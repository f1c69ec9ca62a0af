"""The examples run as scripts: examples/notebook.py (build, train a few steps, save, load, generate) and
examples/ops_tour.py (the op, its oracle, streaming, gradients), whose output the README shows."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.slow


def _run(script: Path, *args: str) -> str:
    buf, old = io.StringIO(), sys.argv
    sys.argv = [str(script), *args]
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old
    return buf.getvalue()


def test_notebook_example_trains_saves_loads_and_generates(tmp_path):
    out = _run(EXAMPLES / "notebook.py", str(tmp_path))
    losses = [float(x) for x in re.findall(r"step \d+: loss ([\d.]+)", out)]
    assert len(losses) == 3 and losses[-1] < losses[0] - 1.0  # it learns the repeated text
    assert "loaded step 30 | same logits: True" in out
    assert re.search(r"generated: '.{24}'", out, re.DOTALL)
    assert (tmp_path / "run" / "checkpoints" / "30").is_dir()


def test_ops_tour_prints_what_the_readme_shows():
    out = _run(EXAMPLES / "ops_tour.py")
    assert "y: (2, 300, 4, 32) float32" in out and "streamed == parallel: True" in out
    err = float(re.search(r"max \|naive - chunked\| \(float64\): (\S+)", out).group(1))
    assert err < 1e-10
