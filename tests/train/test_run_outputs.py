"""What a run leaves for its user: run.json (config + session metadata), metrics.jsonl with numbers (null for
non-finite), TensorBoard event files, the loss-curve figure, one progress bar whose ETA covers the whole job, the BPE
tokenizer choice for text (mc-prepare --bpe-vocab -> train -> eval)."""

from __future__ import annotations

import io
import json
import math
import re
import struct

import numpy as np
import pytest

from mc_jax.data.prepare import main as prepare_main
from mc_jax.eval.cli import main as eval_main
from mc_jax.train import train
from mc_jax.train.metrics import JobProgress, MetricsLogger, read_metrics
from tests.helpers.train_helpers import tiny_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("outputs") / "run"
    result = train(tiny_config("train.steps=4", "train.eval_every=2"), path, progress=False)
    return path, result


def test_run_json_records_the_session(finished_run):
    path, _ = finished_run
    data = json.loads((path / "run.json").read_text())
    assert data["config"]["train"]["steps"] == 4
    (session,) = data["sessions"]
    assert session["start_time"] <= session["end_time"] and session["end_step"] == 4 and session["start_step"] == 0
    assert session["seconds"] >= 0 and session["command"] and session["host"]
    assert session["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    assert session["devices"]["backend"] == "cpu" and session["devices"]["count"] >= 1
    import jax

    assert session["versions"]["jax"] == jax.__version__ and session["versions"]["python"]
    git = session["git"]  # this test runs from the source checkout
    assert git is None or re.fullmatch(r"[0-9a-f]{40}", git["commit"])


def test_metrics_are_numbers_and_non_finite_values_are_null(finished_run, tmp_path):
    path, _ = finished_run
    for line in (path / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert all(v is None or isinstance(v, (int, float)) for k, v in record.items() if k != "split"), record
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(1, "train", {"loss": float("nan"), "grad_norm": float("inf"), "lr": np.float32(0.5)})
    logger.close()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(text) == {"step": 1, "split": "train", "loss": None, "grad_norm": None, "lr": 0.5}
    assert "NaN" not in text and '"nan"' not in text  # strict JSON


def test_tensorboard_event_files_hold_the_scalars(finished_run):
    from tensorboardX.proto.event_pb2 import (
        Event,  # the tensorboard extra (tensorboardX) is in the test extra
    )

    path, _ = finished_run
    (events,) = (path / "tb").glob("events.out.tfevents.*")
    data, pos, scalars = events.read_bytes(), 0, {}
    while pos < len(data):  # TFRecord framing: u64 length, u32 crc, payload, u32 crc
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        event = Event.FromString(data[pos + 12:pos + 12 + n])
        pos += 12 + n + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    assert {"train/loss", "eval/loss", "eval/accuracy"} <= set(scalars)
    train_records = [r for r in read_metrics(path / "metrics.jsonl") if r["split"] == "train"]
    assert [s for s, _ in scalars["train/loss"]] == [r["step"] for r in train_records]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [r["loss"] for r in train_records], rtol=1e-6)


def test_curves_png_is_a_real_figure(finished_run):
    from matplotlib.image import imread

    path, _ = finished_run
    image = imread(path / "curves.png")
    assert image.shape[0] > 300 and image.shape[1] > 800
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50


def test_one_progress_bar_covers_the_whole_job(tmp_path):
    stream = io.StringIO()
    job = JobProgress(4 + 4, stream=stream, log_interval_s=0.0)  # two runs of 4 steps
    train(tiny_config("train.steps=4"), tmp_path / "a", job=job, label="[main 1/2] ", stream=stream)
    assert job.bar.n == 4 and job.bar.total == 8
    train(tiny_config("train.steps=4", "train.seed=3"), tmp_path / "b", job=job, label="[b 2/2] ", stream=stream)
    assert job.bar.n == 8
    job.close()
    lines = stream.getvalue().splitlines()
    bars = [line for line in lines if re.search(r"\d+/8 \[", line)]
    assert bars and all("/8 [" in b for b in bars)  # the bar counts the job's 8 steps, not one run's 4
    assert any(b.startswith("main 1/2:") for b in bars) and any(b.startswith("b 2/2:") for b in bars)
    assert "[main 1/2] done: eval loss" in stream.getvalue() and "[b 2/2] done: eval loss" in stream.getvalue()
    # a resumed run takes its finished steps off the job's total
    job = JobProgress(10, enabled=False)
    job.start_run("[x] ", done_steps=6)
    assert job.bar.total == 4


def test_bpe_tokenizer_from_prepare_to_training_and_eval(tmp_path, capsys):
    pytest.importorskip("tokenizers")  # in the test extra: runs in CI
    corpus = tmp_path / "data" / "tiny.txt"
    assert prepare_main(["--corpus", "tiny", "--out", str(corpus), "--bpe-vocab", "320"]) == 0
    tok_file = tmp_path / "data" / "tiny.bpe320.json"
    printed = capsys.readouterr().out
    assert f"train.task.tokenizer={tok_file} model.vocab_size=320" in printed
    config = tiny_config("model.vocab_size=320", "train.task.kind=text", f"train.task.path={corpus}",
                         f"train.task.tokenizer={tok_file}", "train.task.seq_len=32", "train.steps=3",
                         "train.ckpt_every=0")
    result = train(config, tmp_path / "run", progress=False)
    assert "BPE tokens" in capsys.readouterr().err and math.isfinite(result.final_eval["loss"])
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == tok_file.read_bytes()  # travels with the run
    tok_file.unlink()  # eval reads the run's copy
    out = tmp_path / "eval"
    assert eval_main([str(tmp_path / "run"), "--text", str(corpus), "--generate", "The ", "--max-new-tokens", "3",
                      "--out", str(out), "--no-progress"]) == 0
    (res,) = out.iterdir()
    results = json.loads((res / "results.json").read_text())
    assert results["text"]["split"] == "val" and results["text"]["bits_per_byte"] > 0
    assert isinstance(results["generation"]["output"], str)
    # too small a model vocabulary for the tokenizer: refused with the size to set
    small = tiny_config("model.vocab_size=256", "train.task.kind=text", f"train.task.path={corpus}",
                        f"train.task.tokenizer={tmp_path / 'run' / 'tokenizer.json'}", "train.task.seq_len=32")
    from mc_jax.train.data import DataError

    with pytest.raises(DataError, match="set model.vocab_size=320"):
        train(small, tmp_path / "run2", progress=False)
    with pytest.raises(ValueError, match="applies to train.task.kind=text only"):
        tiny_config("train.task.tokenizer=x.json")
