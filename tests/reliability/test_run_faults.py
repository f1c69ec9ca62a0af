"""Faults around a training run: finished runs never rewritten, extension, --init-from, damaged checkpoints,
kills at save boundaries, SIGTERM / SIGINT, read-only and full file systems, bad paths and bad hyperparameters.
Every refusal asserts its clear message and that nothing already written changed (hash of the run directory)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mc_jax.eval.cli import main as eval_main
from mc_jax.train import Checkpointer, CheckpointError, read_metrics, train
from mc_jax.train.checkpoint import MANIFEST, SET_ASIDE_SUBDIR, manifest_problem
from mc_jax.train.cli import main as train_main
from mc_jax.train.loop import EXIT_PREEMPTED, RunDirError
from tests.helpers.faults import (
    ERROR_LOG,
    REPO,
    can_unshare,
    digest,
    env,
    eval_cmd,
    flip_bit,
    in_namespace,
    invert_bytes,
    largest_data_file,
    read_only_bind,
    train_cmd,
)
from tests.helpers.train_helpers import tiny_config

SHORT = ("train.steps=4", "train.ckpt_every=2", "train.keep=3")


def _no_duplicates(run_dir: Path) -> list[dict]:
    records = read_metrics(run_dir / "metrics.jsonl")
    keys = [(r["step"], r["split"]) for r in records]
    assert len(keys) == len(set(keys)), f"duplicate metrics records: {sorted(keys)}"
    return records


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run with checkpoints 2 and 4 (copy it before changing it)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_config(*SHORT), run_dir, progress=False)
    return run_dir


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


# ---- completion ------------------------------------------------------------------------------------------------------
def test_finished_run_is_left_alone_shortening_refused_and_extension_continues(finished, tmp_path, capsys):
    run_dir = _copy(finished, tmp_path)
    before = digest(run_dir)
    first = json.loads((run_dir / "final.json").read_text())
    import io

    out = io.StringIO()
    again = train(tiny_config(*SHORT), run_dir, resume=True, stream=out)
    assert again.already_finished and "is finished (4 steps): left as it is" in out.getvalue()
    assert again.tokens_per_s == first["tokens_per_s"] and again.train_loss == first["train_loss"]
    with pytest.raises(RunDirError, match="finished 4 steps; train.steps=3 cannot shorten it"):
        train(tiny_config("train.steps=3", "train.ckpt_every=2", "train.keep=3"), run_dir, resume=True,
              progress=False)
    assert digest(run_dir) == before

    extended = train(tiny_config("train.steps=7", "train.ckpt_every=2", "train.keep=3"), run_dir, resume=True,
                     progress=False)
    assert extended.extended_from == 4 and extended.resumed_from == 4 and sorted(extended.losses) == [5, 6, 7]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["step"] == 7 and final["extended_from"] == 4 and final["train_loss"] is not None
    assert json.loads((run_dir / "final.step4.json").read_text()) == first  # the finished run's record, kept
    assert json.loads((run_dir / "run.json").read_text())["config"]["train"]["steps"] == 7
    records = _no_duplicates(run_dir)
    assert sorted(r["step"] for r in records if r["split"] == "train") == list(range(1, 8))
    assert [r["step"] for r in records if r["split"] == "eval"] == [4, 7]


def test_unfinished_run_refuses_a_new_step_count(finished, tmp_path):
    run_dir = _copy(finished, tmp_path)
    (run_dir / "final.json").unlink()
    before = digest(run_dir)
    with pytest.raises(RunDirError, match="is not finished .* train.steps may change only to extend a finished run"):
        train(tiny_config("train.steps=9", "train.ckpt_every=2"), run_dir, resume=True, progress=False)
    assert digest(run_dir) == before


def test_kill_before_final_json_leaves_no_duplicate_and_no_null_fields(finished, tmp_path):
    """The state a kill leaves between the final evaluation record and final.json (identical on disk)."""
    run_dir = _copy(finished, tmp_path)
    first = json.loads((run_dir / "final.json").read_text())
    (run_dir / "final.json").unlink()
    result = train(tiny_config(*SHORT), run_dir, resume=True, progress=False)
    assert not result.already_finished and result.losses == {}
    final = json.loads((run_dir / "final.json").read_text())
    for key in ("train_loss", "tokens_per_s", "final_eval", "num_params"):
        assert final[key] == first[key], key
    assert final["train_seconds"] == first["train_seconds"] > 0
    records = _no_duplicates(run_dir)
    assert [r["step"] for r in records if r["split"] == "eval"] == [4]


def test_two_run_job_killed_during_the_baseline_leaves_the_main_run_alone(tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["--preset", str(REPO / "tests/train/tiny_run_preset.py"), "--no-progress", f"train.out_dir={out}",
            *SHORT, "train.baseline=none"]
    assert train_main(args) == 0
    # the baseline killed after its step-2 checkpoint: no checkpoint 4, no final.json (records after 2 are stale)
    shutil.rmtree(out / "baseline" / "checkpoints" / "4")
    (out / "baseline" / "final.json").unlink()
    main_before = digest(out / "main")
    capsys.readouterr()
    assert train_main(["--resume", "--no-progress", f"train.out_dir={out}"]) == 0
    printed = capsys.readouterr()
    assert digest(out / "main") == main_before
    assert "is finished (4 steps): left as it is" in printed.err
    assert "nan" not in printed.out.split("memory caching:")[0]  # tok/s of the untouched run comes from final.json
    _no_duplicates(out / "baseline")
    assert json.loads((out / "baseline" / "final.json").read_text())["resumed_from"] == 2


# ---- checkpoint integrity --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("item,damage", [("params", "bit"), ("opt_state", "bytes")])
def test_damaged_checkpoint_is_refused_naming_the_file_and_the_intact_one_is_offered(finished, tmp_path, item,
                                                                                    damage, capsys):
    run_dir = _copy(finished, tmp_path)
    (run_dir / "final.json").unlink()  # the run was killed before completing (a finished run is left alone)
    target = largest_data_file(run_dir / "checkpoints" / "4", item)
    (flip_bit if damage == "bit" else invert_bytes)(target)
    before = digest(run_dir)
    rel = str(target.relative_to(run_dir / "checkpoints" / "4"))
    with pytest.raises(CheckpointError) as info:
        train(tiny_config(*SHORT), run_dir, resume=True, progress=False)
    message = str(info.value)
    assert f"is damaged: file {rel} has changed since it was saved" in message
    assert "--resume --resume-from-step 2" in message and len(message.splitlines()) <= 3
    if item == "params":  # eval.py refuses it too, before computing anything
        assert eval_main([str(run_dir)]) == 1
        err = capsys.readouterr().err
        assert rel in err and f"eval.py {run_dir} --step 2" in err and "MQAR" not in err
    assert digest(run_dir) == before
    # only when told: continue from the intact step 2; the damaged one is moved aside, not deleted
    result = train(tiny_config(*SHORT), run_dir, resume=True, resume_from_step=2, progress=False)
    assert result.resumed_from == 2 and sorted(result.losses) == [3, 4]
    assert (run_dir / SET_ASIDE_SUBDIR / "4" / rel).exists()
    assert manifest_problem(run_dir / "checkpoints" / "4") is None
    _no_duplicates(run_dir)


def test_checkpoint_without_manifest_is_uncommitted_and_set_aside(finished, tmp_path):
    run_dir = _copy(finished, tmp_path)
    (run_dir / "checkpoints" / "4" / MANIFEST).unlink()
    (run_dir / "final.json").unlink()
    reader = Checkpointer(run_dir, read_only=True)
    assert reader.all_steps() == [2] and reader.saved_steps() == [2, 4]
    reader.close()
    result = train(tiny_config(*SHORT), run_dir, resume=True, progress=False)
    assert result.resumed_from == 2 and (run_dir / SET_ASIDE_SUBDIR / "4").is_dir()


# ---- --init-from ----------------------------------------------------------------------------------------------------
def test_init_from_into_a_cached_model_keeps_shared_params_and_lists_new_ones(tmp_path):
    base = tiny_config("model.mixer.kind=none", "model.mixer.aggregation=residual", *SHORT)
    train(base, tmp_path / "none", progress=False)
    # warm-up from lr 0: the step-1 update is zero, so checkpoint 1 holds exactly the initial parameters
    cached = tiny_config("train.steps=2", "train.warmup=1", "train.ckpt_every=1", "train.keep=3")
    result = train(cached, tmp_path / "mc", init_from=tmp_path / "none" / "checkpoints" / "4", progress=False)
    assert result.init_from["step"] == 4 and result.init_from["fresh"] and not result.init_from["unused"]
    assert all("u_proj" in p or "router" in p or "wu" in p.lower() for p in result.init_from["fresh"]), \
        result.init_from["fresh"]
    assert json.loads((tmp_path / "mc" / "run.json").read_text())["init_from"]["step"] == 4
    from mc_jax.models import abstract_model, create_model
    from mc_jax.train.step import split_model

    flat = lambda t: {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(x)
                      for p, x in jax.tree_util.tree_leaves_with_path(t)}
    src, _, _ = Checkpointer(tmp_path / "none", read_only=True).restore(
        4, split_model(abstract_model(base.model))[1])
    got, _, _ = Checkpointer(tmp_path / "mc", read_only=True).restore(1, split_model(abstract_model(cached.model))[1])
    fresh = flat(split_model(create_model(cached.model, seed=0))[1])
    src, got = flat(src), flat(got)
    for path, value in got.items():
        np.testing.assert_array_equal(value, fresh[path] if path in result.init_from["fresh"] else src[path], path)
    before = digest(tmp_path / "none")
    with pytest.raises(CheckpointError, match=r"only in its caching settings.*\n  model.d_model: 16"):
        train(tiny_config("model.d_model=8"), tmp_path / "other", init_from=tmp_path / "none", progress=False)
    assert digest(tmp_path / "none") == before and not (tmp_path / "other").exists()


# ---- time-based checkpoints ------------------------------------------------------------------------------------------
def test_ckpt_minutes_saves_by_time(tmp_path):
    train(tiny_config("train.steps=3", "train.ckpt_every=0", "train.ckpt_minutes=1e-9", "train.keep=5"), tmp_path,
          progress=False)
    assert Checkpointer(tmp_path, read_only=True).all_steps() == [1, 2, 3]


# ---- bad paths and hyperparameters -----------------------------------------------------------------------------------
def test_out_dir_pointing_at_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert train_main(["--preset", str(REPO / "tests/train/tiny_run_preset.py"), "--no-progress",
                       f"train.out_dir={target}", *SHORT]) == 1
    err = capsys.readouterr().err
    assert f"{target} is a file, not a directory; choose another train.out_dir" in err and "Traceback" not in err
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("override", ["train.lr=nan", "train.lr=inf", "train.clip=nan", "train.eps=inf",
                                      "train.weight_decay=nan", "train.b2=nan", "model.init_std=nan",
                                      "model.norm_eps=inf", "train.ckpt_minutes=inf"])
def test_non_finite_hyperparameters_are_refused(override, capsys):
    assert train_main(["--print-config", override]) == 2
    err = capsys.readouterr().err.strip()
    name = override.split("=")[0].removeprefix("model.")
    assert err.startswith("error: ") and name in err and len(err.splitlines()) <= 2, err


# ---- subprocesses: signals, kills at save boundaries -----------------------------------------------------------------
def _wait_for(predicate, proc, timeout=180.0):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def _train_steps(metrics: Path) -> int:
    return max((r["step"] for r in read_metrics(metrics) if r["split"] == "train"), default=0)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_resumed_run_matches_the_uninterrupted_one(tmp_path):
    overrides = ["train.steps=60", "train.ckpt_every=1000", "train.log_every=1", "train.baseline=", "train.keep=2"]
    out = tmp_path / "runs"
    proc = subprocess.Popen(train_cmd(*overrides, f"train.out_dir={out}"), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:  # watched from its start: a reference trained here first could let it finish before the signal
        assert _wait_for(lambda: _train_steps(out / "main" / "metrics.jsonl") >= 4, proc), "no progress"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "stopped by SIGTERM: checkpoint of step" in err and "Traceback" not in err
    assert f"resume with: python train.py --resume train.out_dir={out}" in err
    saved = Checkpointer(out / "main", read_only=True).all_steps()
    assert len(saved) == 1 and 4 <= saved[0] < 60 and f"step {saved[0]} saved" in err
    assert manifest_problem(out / "main" / "checkpoints" / str(saved[0])) is None
    reference = train(tiny_config(*overrides), tmp_path / "ref", progress=False)  # uninterrupted, same environment
    resumed = train(tiny_config(*overrides), out / "main", resume=True, progress=False)
    assert resumed.resumed_from == saved[0]
    losses = {r["step"]: r["loss"] for r in _no_duplicates(out / "main") if r["split"] == "train"}
    assert losses == reference.losses  # bit-identical per-step losses


@pytest.mark.slow
def test_double_sigint_exits_at_once_and_leaves_only_committed_checkpoints(tmp_path):
    overrides = ["train.steps=40", "train.ckpt_every=1", "train.log_every=1", "train.baseline=", "train.keep=3"]
    out = tmp_path / "runs"
    proc = subprocess.Popen(train_cmd(*overrides, f"train.out_dir={out}"), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert _wait_for(lambda: _train_steps(out / "main" / "metrics.jsonl") >= 3, proc), "no progress"
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (130, EXIT_PREEMPTED), err
    assert "KeyboardInterrupt" not in err and "Traceback" not in err
    reader = Checkpointer(out / "main", read_only=True)
    for step in reader.all_steps():
        assert manifest_problem(reader.step_dir(step)) is None
    reader.close()
    result = train(tiny_config(*overrides), out / "main", resume=True, progress=False)
    assert result.step == 40
    _no_duplicates(out / "main")


@pytest.mark.slow
def test_sigkill_at_a_save_boundary_then_resume(tmp_path):
    overrides = ["train.steps=40", "train.ckpt_every=3", "train.log_every=1", "train.baseline=", "train.keep=2"]
    out = tmp_path / "runs"
    ckpts = out / "main" / "checkpoints"
    proc = subprocess.Popen(train_cmd(*overrides, f"train.out_dir={out}"), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO)
    try:  # kill while the second checkpoint is being written (its orbax temporary directory exists)
        in_save = lambda: ckpts.is_dir() and any(".orbax-checkpoint-tmp" in p.name for p in ckpts.iterdir()) \
            and any(p.name == "3" for p in ckpts.iterdir())
        hit = _wait_for(in_save, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert hit, "the run never reached its second checkpoint"
    reader = Checkpointer(out / "main", read_only=True)
    committed = reader.all_steps()
    assert committed and all(manifest_problem(reader.step_dir(s)) is None for s in committed)
    reader.close()
    result = train(tiny_config(*overrides), out / "main", resume=True, progress=False)
    assert result.resumed_from == committed[-1] and result.step == 40
    _no_duplicates(out / "main")


# ---- read-only and full file systems (private mount namespaces) ------------------------------------------------------
needs_unshare = pytest.mark.skipif(can_unshare() is not None, reason=str(can_unshare()))


@needs_unshare
def test_read_only_run_dir_is_refused_by_resume_and_eval_before_computing(finished, tmp_path):
    out = tmp_path / "out"
    run_dir = out / "main"
    shutil.copytree(finished, run_dir)
    (run_dir / "final.json").unlink()  # an unfinished run: --resume must write
    before = digest(out)
    p = in_namespace(read_only_bind(out), train_cmd("--resume", f"train.out_dir={out}", "train.baseline="))
    assert p.returncode == 1, p.stderr
    assert f"cannot write to {run_dir} (" in p.stderr and "read-only file system" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) <= 2, p.stderr
    p = in_namespace(read_only_bind(out), eval_cmd(str(run_dir)))
    assert p.returncode == 1 and "cannot write the results to" in p.stderr and "read-only file system" in p.stderr
    assert "MQAR" not in p.stdout, "eval.py computed before checking that it can write"
    assert digest(out) == before


@needs_unshare
@pytest.mark.slow
def test_full_disk_during_a_checkpoint_gives_one_clear_error_and_keeps_committed_checkpoints(tmp_path):
    mnt, copy = tmp_path / "small", tmp_path / "copy"
    mnt.mkdir()
    p = in_namespace(f"mount -t tmpfs -o size=700k tmpfs {mnt}",
                     train_cmd("train.steps=40", "train.ckpt_every=1", "train.keep=40", "train.baseline=",
                               f"train.out_dir={mnt}/runs"),
                     after=f"cp -a {mnt}/runs {copy}")
    assert p.returncode == 1, p.stderr
    err = p.stderr.strip()
    assert "no space left on the device" in err
    # Known defect (2026-12-01, 1 run in 3): when the disk fills inside orbax's background commit thread, orbax logs
    # that thread's traceback besides our one-line error. The committed checkpoints are still checked below.
    orbax_thread_traceback = "orbax/checkpoint/_src/futures/future.py" in err
    if not orbax_thread_traceback:
        assert "Traceback" not in err and "Exception in thread" not in err
        assert len(err.splitlines()) <= 3, err
    run_dir = copy / "main"
    reader = Checkpointer(run_dir, read_only=True)
    committed = reader.all_steps()
    assert committed, "nothing was committed before the disk filled up"
    for step in committed:  # what was written before is unchanged
        assert manifest_problem(reader.step_dir(step)) is None, step
    reader.close()
    assert (run_dir / ERROR_LOG).exists() and not (run_dir / "final.json").exists()
    read_metrics(run_dir / "metrics.jsonl")
    if orbax_thread_traceback:  # everything else held; report the known defect instead of passing
        pytest.xfail("orbax's background commit thread logged a traceback beside the one-line error")
