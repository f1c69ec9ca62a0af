"""The training loop: checkpoints, exact resumption after SIGKILL, NaN stop, output-directory and config refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mc_jax.configs_util import to_dict
from mc_jax.models import create_model
from mc_jax.train import (
    Checkpointer,
    CheckpointError,
    DataError,
    NonFiniteLossError,
    RunDirError,
    read_metrics,
    train,
)
from mc_jax.train.optim import make_optimizer
from mc_jax.train.step import split_model
from tests.helpers.train_helpers import tiny_config

REPO = Path(__file__).resolve().parents[2]


def _tree_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"}


# ---- checkpoints -----------------------------------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path):
    config = tiny_config("model.mixer.memory=titans")
    _, params, _ = split_model(create_model(config.model, seed=1))
    tx = make_optimizer(config.train)
    opt = tx.init(params)
    opt = jax.tree.map(lambda x: x + 0.5 if hasattr(x, "dtype") and x.dtype == np.float32 else x, opt)
    ckpt = Checkpointer(tmp_path, keep=2)
    for step in (3, 6, 9):
        ckpt.save(step, params, opt, data_state={"next_index": step}, config=config)
    ckpt.close()
    reader = Checkpointer(tmp_path, read_only=True)
    assert reader.all_steps() == [6, 9]  # keep=2
    _, zeros, _ = split_model(create_model(config.model, seed=2))
    p, o, meta = reader.restore(9, zeros, tx.init(zeros))
    assert _tree_equal(p, params) and _tree_equal(o, opt)
    assert jax.tree.structure(o) == jax.tree.structure(opt)
    assert meta["data_state"] == {"next_index": 9} and meta["step"] == 9
    assert meta["config"] == json.loads(json.dumps(to_dict(config)))
    assert reader.read_config(9) == config
    reader.close()


def test_corrupted_checkpoint_is_refused_and_left_alone(tmp_path):
    config = tiny_config()
    _, params, _ = split_model(create_model(config.model))
    opt = make_optimizer(config.train).init(params)
    ckpt = Checkpointer(tmp_path)
    ckpt.save(5, params, opt, data_state=None, config=config)
    ckpt.close()
    step_dir = tmp_path / "checkpoints" / "5"
    for f in (step_dir / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="is damaged: file .* when saved|corrupted or partial"):
        Checkpointer(tmp_path, read_only=True).restore(5, params, opt)
    (step_dir / "meta" / "metadata").write_text("{not json")
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="is damaged: file .* when saved|corrupted or partial"):
        train(config, tmp_path, resume=True, progress=False)
    assert _snapshot(tmp_path) == before


def test_checkpoint_from_a_different_config_is_refused(tmp_path):
    config = tiny_config("train.steps=5")
    train(config, tmp_path / "run", progress=False)
    before = _snapshot(tmp_path / "run")
    other = tiny_config("train.steps=5", "model.d_model=8")
    with pytest.raises(CheckpointError, match=r"model.d_model: 16 \(checkpoint\) vs 8 \(requested\)"):
        train(other, tmp_path / "run", resume=True, progress=False)
    _, params8, _ = split_model(create_model(other.model))
    with pytest.raises(CheckpointError, match="does not fit this model's config"):
        Checkpointer(tmp_path / "run", read_only=True).restore(5, params8)
    assert _snapshot(tmp_path / "run") == before


# ---- output directory ------------------------------------------------------------------------------------------------
def test_output_dir_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path):
    config = tiny_config("train.steps=4", "train.ckpt_every=2")
    run = tmp_path / "run"
    first = train(config, run, progress=False)
    before = _snapshot(run)
    with pytest.raises(RunDirError, match="already holds a run; pass --resume .* or --overwrite"):
        train(config, run, progress=False)
    assert _snapshot(run) == before
    resumed = train(config, run, resume=True, progress=False)  # already finished: left as it is
    assert resumed.already_finished and resumed.final_eval == first.final_eval
    assert resumed.tokens_per_s == first.tokens_per_s and resumed.train_loss == first.train_loss
    assert _snapshot(run) == before
    again = train(config, run, overwrite=True, progress=False)
    assert again.resumed_from is None and again.losses == first.losses
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="not empty and holds no mc_jax run"):
        train(config, other, overwrite=True, progress=False)
    assert (other / "notes.txt").read_text() == "keep me"


def test_bad_data_fails_before_anything_is_written(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x80 not utf-8")
    for path, match in ((empty, "empty|no text"), (tmp_path / "missing.txt", "does not exist"),
                        (binary, "cannot read")):
        config = tiny_config("train.task.kind=text", f"train.task.path={path}", "model.vocab_size=256")
        with pytest.raises(DataError, match=match):
            train(config, tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()
    short = tmp_path / "short.txt"
    short.write_text("hello")
    config = tiny_config("train.task.kind=text", f"train.task.path={short}", "model.vocab_size=256")
    with pytest.raises(DataError, match="unusable"):
        train(config, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        tiny_config("train.task.kind=text", "model.vocab_size=128")
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        tiny_config("train.task.vocab_size=64")
    assert not (tmp_path / "run").exists()


# ---- NaN -------------------------------------------------------------------------------------------------------------
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    config = tiny_config("train.lr=1e10", "train.warmup=0", "train.clip=0", "train.ckpt_every=1", "train.steps=20")
    with pytest.raises(NonFiniteLossError) as info:
        train(config, tmp_path, progress=False)
    err = info.value
    assert f"at step {err.step}" in str(err) and "nan" in str(err).lower()
    assert err.last_checkpoint == err.step - 1 >= 1
    assert f"last good checkpoint (step {err.step - 1})" in str(err)
    reader = Checkpointer(tmp_path, read_only=True)
    assert reader.latest_step() == err.step - 1
    _, params, _ = split_model(create_model(config.model))
    restored, _, _ = reader.restore(err.step - 1, params)  # restores, and holds finite values only
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored))
    assert max(r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")) == err.step


# ---- exact resumption after SIGKILL ----------------------------------------------------------------------------------
def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(tmp_path):
    steps, kill_after = 40, 14
    overrides = [f"train.steps={steps}", "train.ckpt_every=5", "train.log_every=1", "train.batch_size=16",
                 "train.warmup=5", "train.baseline=", "train.keep=2"]
    cmd = [sys.executable, str(REPO / "train.py"), "--preset", str(Path(__file__).with_name("tiny_run_preset.py")),
           "--no-progress"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + overrides + [f"train.out_dir={killed}"], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # Watch the run from the start (a reference trained here first could let it finish before the kill).
        metrics = killed / "main" / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and any(r["step"] >= kill_after for r in read_metrics(metrics)):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert max(_train_losses(killed / "main")) < steps
    # The uninterrupted reference, in this process (same environment, so the same XLA program).
    reference = train(tiny_config(*overrides), tmp_path / "ref", progress=False)
    assert sorted(reference.losses) == list(range(1, steps + 1))
    latest = Checkpointer(killed / "main", read_only=True).latest_step()
    assert latest is not None and latest < steps

    out = subprocess.run(cmd + ["--resume", f"train.out_dir={killed}"], env=dict(os.environ), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    resumed = _train_losses(killed / "main")
    assert sorted(resumed) == list(range(1, steps + 1))
    assert resumed == reference.losses  # bit-identical per-step losses
    final = json.loads((killed / "main" / "final.json").read_text())
    assert final["resumed_from"] == latest
    assert final["final_eval"] == reference.final_eval
