"""The training loop on a mesh: ``train.py mesh.*=...``, resuming on another mesh shape, and two processes on
localhost (``jax.distributed`` with a loopback coordinator, gloo collectives) that agree with the one-process run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mc_jax.models import abstract_model
from mc_jax.train import Checkpointer, read_metrics, train
from mc_jax.train.cli import main
from mc_jax.train.step import split_model
from tests.helpers.parallel_helpers import LOOP_OVERRIDES, STEPS, loop_config
from tests.helpers.tolerances import assert_close

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PRESET = str(REPO / "tests" / "train" / "tiny_run_preset.py")
MESH = ("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")


def _train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"}


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
    """``train.py`` on 8 devices (data x fsdp x tensor = 2 x 2 x 2): 4 steps, checkpoints at 2 and 4."""
    out = tmp_path_factory.mktemp("mesh_run")
    code = main(["--preset", PRESET, "--no-progress", *LOOP_OVERRIDES, *MESH, "train.baseline=",
                 f"train.out_dir={out}"])
    assert code == 0
    run_dir = out / "main"
    losses = _train_losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return run_dir, losses


def test_resume_on_another_mesh_continues_the_run(mesh_run, tmp_path):
    run_dir, losses = mesh_run
    resumed = tmp_path / "main"
    shutil.copytree(run_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / str(STEPS))  # back to the checkpoint of step 2
    (resumed / "final.json").unlink()  # (a killed run: a finished one would be left as it is)
    config = loop_config("mesh.data=8", f"train.out_dir={tmp_path}")  # plain data parallel now
    result = train(config, resumed, resume=True, progress=False)
    assert result.resumed_from == 2 and sorted(result.losses) == [3, 4]
    for step in (3, 4):
        assert_close(result.losses[step], losses[step], "float32", f"step {step}")


RESTORE_ON_ONE_DEVICE = """
import sys, numpy as np, jax
from mc_jax.models import abstract_model
from mc_jax.train import Checkpointer
from mc_jax.train.step import split_model
reader = Checkpointer(sys.argv[1], read_only=True)
config = reader.read_config(4)
_, abstract, _ = split_model(abstract_model(config.model))
params, _, _ = reader.restore(4, abstract)
leaves = jax.tree.leaves(params)
assert jax.device_count() == 1 and all(len(x.devices()) == 1 for x in leaves)
print(repr(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in leaves)))
"""


def test_checkpoint_from_the_mesh_restores_on_a_single_device_machine(mesh_run):
    """Train on a mesh, evaluate elsewhere: a process with one device reads the 8-device checkpoint."""
    run_dir, _ = mesh_run
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", RESTORE_ON_ONE_DEVICE, str(run_dir)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reader = Checkpointer(run_dir, read_only=True)
    config = reader.read_config(4)
    _, abstract, _ = split_model(abstract_model(config.model))
    params, _, _ = reader.restore(4, abstract)
    reader.close()
    expected = sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree.leaves(params))
    assert float(proc.stdout.strip().splitlines()[-1]) == expected


def test_cli_refuses_a_mesh_that_does_not_fit(tmp_path, capsys):
    code = main(["--preset", PRESET, "--no-progress", "mesh.data=3", "train.batch_size=6", "train.baseline=",
                 f"train.out_dir={tmp_path}"])
    assert code == 1  # a valid config, but 3 devices are not the 8 this machine has
    err = capsys.readouterr().err
    assert "mesh.data=3" in err and "8 are available" in err
    assert not (tmp_path / "main").exists()  # refused before anything was written
    code = main(["--preset", PRESET, "--no-progress", "mesh.data=3", "train.baseline=", f"train.out_dir={tmp_path}"])
    assert code == 2  # the config itself is invalid: 4 rows do not split over 3 devices
    assert "not divisible by mesh.data x mesh.fsdp = 3" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost_agree_with_one(mesh_run, tmp_path):
    _, losses = mesh_run
    port = _free_port()
    run_dir = tmp_path / "run"
    procs = []
    for pid in range(2):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
               "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_cpu_use_fusion_emitters=false",
               "MC_COORDINATOR": f"127.0.0.1:{port}", "MC_NUM_PROCESSES": "2", "MC_PROCESS_ID": str(pid),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, str(HERE / "scaleout_worker.py"), str(run_dir), str(tmp_path / f"out{pid}.json"),
               "mesh.data=2", "mesh.fsdp=2", f"train.out_dir={tmp_path}"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for pid, proc in enumerate(procs):
        try:
            text, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            text = proc.communicate()[0]
            pytest.fail(f"process {pid} timed out after 240 s; its output:\n{text[-4000:]}")
        outputs.append(text)
    for pid, proc in enumerate(procs):
        assert proc.returncode == 0, f"process {pid} exited with {proc.returncode}; its output:\n{outputs[pid][-4000:]}"
    res = [json.loads((tmp_path / f"out{pid}.json").read_text()) for pid in range(2)]
    for pid, r in enumerate(res):
        assert (r["mode"], r["process_index"], r["process_count"]) == ("explicit", pid, 2)
        assert (r["device_count"], r["local_device_count"]) == (4, 2)
        assert r["checkpoints"] == [2, 4]
    assert res[0]["losses"] == res[1]["losses"]  # one program: the same replicated loss on both hosts
    assert res[0]["final_eval"] == res[1]["final_eval"]
    assert sorted(int(s) for s in res[0]["losses"]) == list(range(1, STEPS + 1))
    for step, loss in res[0]["losses"].items():  # = the one-process run on 8 devices (same global batches)
        assert_close(loss, losses[int(step)], "float32", f"step {step}")
    # process 0 wrote the metrics; they hold the same losses
    assert _train_losses(run_dir) == {int(k): v for k, v in res[0]["losses"].items()}
