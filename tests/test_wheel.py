"""A non-editable install works anywhere: build the wheel, install it into a fresh virtual environment, and run the
console scripts from a directory that is not the source tree.

The wheel itself is installed with ``pip install --no-deps --no-index`` (offline, a genuine non-editable install of
exactly the files the wheel holds). Its dependencies (jax, flax, ...) are not reinstalled (minutes from an index):
after the install, a ``.pth`` file appends this interpreter's site-packages to the new environment's path. Python
does not execute the ``.pth`` files of directories added that way, so an editable install of mc_jax there (CI's
``pip install -e``) stays invisible; the test proves it by asserting that ``mc_jax.__file__`` lies in the new
environment. Building the wheel needs setuptools >= 68 and wheel from the package index (build isolation).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd, *, cwd, env, timeout=300):
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    print(f"$ {' '.join(map(str, cmd))}   [{time.perf_counter() - t0:.1f} s]")
    return proc


def test_wheel_installs_and_trains_outside_the_source_tree(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    src = tmp_path / "src"
    shutil.copytree(REPO / "mc_jax", src / "mc_jax", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", src], cwd=tmp_path, env=env)
    (wheel,) = (tmp_path / "dist").glob("mc_jax-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env)
    bin_dir = venv / "bin"
    _run([bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=tmp_path, env=env)
    (child_site,) = (venv / "lib").glob("python3*/site-packages")
    (child_site / "_parent_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    work = tmp_path / "elsewhere"  # not the source tree, and no source tree on the path
    work.mkdir()
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": ""}
    probe = ("import mc_jax, importlib.metadata as m; print(mc_jax.__file__); "
             "print(m.distribution('mc_jax').read_text('direct_url.json'))")
    where = _run([bin_dir / "python", "-c", probe], cwd=work, env=env).stdout
    mc_jax_file = Path(where.splitlines()[0])
    print("mc_jax imported from", mc_jax_file)
    assert mc_jax_file.is_relative_to(child_site), f"mc_jax came from {mc_jax_file}, not the new venv {child_site}"
    assert '"editable": true' not in where

    printed = json.loads(_run([bin_dir / "mc-train", "--print-config"], cwd=work, env=env).stdout)
    assert printed["main"]["train"]["task"]["kind"] == "stacked_mqar"
    assert [p for p in _run([bin_dir / "mc-train", "--list-presets"], cwd=work, env=env).stdout.split()] == sorted(
        ["paper_1_3b", "paper_760m", "small", "tiny", "train_tiny_mqar", "train_token_mqar"])
    out = _run([bin_dir / "mc-train", "train.steps=5", "train.warmup=1", "train.eval_every=0", "--no-progress",
                "train.task.eval_examples=64", "train.baseline=none"], cwd=work, env=env).stdout
    print(out)
    assert "memory caching:" in out and (work / "runs" / "tiny_mqar" / "main" / "final.json").exists()
    ev = _run([bin_dir / "mc-eval", "runs/tiny_mqar/main", "--examples", "16", "--no-progress"], cwd=work,
              env=env).stdout
    assert "stacked MQAR (kv=32, L=64, 1024 keys x 1024 values, 16 sequences): accuracy" in ev
    prep = _run([bin_dir / "mc-prepare", "--corpus", "tiny", "--out", "data/tiny.txt"], cwd=work, env=env).stdout
    assert "wrote data/tiny.txt" in prep
