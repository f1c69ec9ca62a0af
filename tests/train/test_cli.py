"""train.py's command line: dotted overrides shared with the model config, the baseline run, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mc_jax.train.cli import build_parser, main, resolve_configs
from mc_jax.train.config import (
    RunConfig,
    TaskConfig,
    TrainConfig,
    baseline_config,
    config_diff,
    config_from_dict,
    config_to_dict,
    load_run_config,
)

PRESET = str(Path(__file__).with_name("tiny_run_preset.py"))


def test_default_preset_is_the_tiny_mqar_comparison():
    config = load_run_config()
    assert config.model.mixer.kind == "mc" and config.model.mixer.aggregation == "grm"
    assert config.model.mixer.init == "independent"
    assert config.train.task.kind == "stacked_mqar" and config.train.task.seq_len == 64
    assert config.model.inputs == "pair_table" and config.model.num_layers == 1 and not config.model.mlp
    assert config.train.baseline == "none"
    base = baseline_config(config)
    assert base.model.mixer.kind == "none" and base.train.baseline == ""
    assert config_diff(config, base, sections=("model.",)) == [
        "model.mixer.kind: 'mc' (checkpoint) vs 'none' (requested)"]


def test_cli_parses_overrides_into_model_and_train_sections():
    args = build_parser().parse_args(["model.mixer.aggregation=ssc", "model.mixer.top_k=2", "train.steps=200",
                                      "train.task.num_kv_pairs=4", "train.baseline=", "--preset", PRESET])
    (name, config, run_dir), = resolve_configs(args)
    assert name == "main" and run_dir.name == "main"
    assert config.model.mixer.aggregation == "ssc" and config.model.mixer.top_k == 2
    assert config.train.steps == 200 and config.train.task.num_kv_pairs == 4 and config.train.baseline == ""
    runs = resolve_configs(build_parser().parse_args(["train.out_dir=/tmp/x"]))
    assert [(n, str(d)) for n, _, d in runs] == [("main", "/tmp/x/main"), ("baseline", "/tmp/x/baseline")]


def test_cli_print_config_and_bad_overrides(capsys):
    assert main(["--print-config", "train.steps=7", "train.warmup=1", "model.d_model=32"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["main"]["train"]["steps"] == 7 and printed["baseline"]["model"]["mixer"]["kind"] == "none"
    assert printed["main"]["model"]["d_model"] == 32
    for bad, match in (("train.stepz=3", "unknown config key 'train.stepz'"),
                       ("train.steps=many", "expected an int"),
                       ("model.mixer.aggregation=nope", "mixer.aggregation='nope' is not one of"),
                       ("train.warmup=5000", "must be smaller than train.steps"),
                       ("train.task.vocab_size=4096", "vocabulary mismatch")):
        assert main(["--print-config", bad]) == 2
        assert match in capsys.readouterr().err, bad
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--resume", "--overwrite"])


def test_config_dict_round_trip():
    config = RunConfig(train=TrainConfig(task=TaskConfig(kind="text", path="x.txt")))
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    with pytest.raises(ValueError, match="not a valid RunConfig"):
        config_from_dict({"model": {}, "train": {"stepz": 1}})


def test_cli_trains_refuses_reuse_and_resume_rejects_changes(tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["--preset", PRESET, "--no-progress", f"train.out_dir={out}", "train.steps=4", "train.ckpt_every=2",
            "train.baseline=none"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "memory caching:" in printed and "without caching" in printed
    assert (out / "main" / "final.json").exists() and (out / "baseline" / "final.json").exists()
    summary = json.loads((out / "comparison.json").read_text())
    assert set(summary) == {"main", "baseline"}
    before = (out / "main" / "metrics.jsonl").read_bytes()
    assert main(args) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["--resume", "--no-progress", f"train.out_dir={out}", "model.d_model=8"]) == 2
    assert "model.d_model: 16 (checkpoint) vs 8 (requested)" in capsys.readouterr().err
    assert (out / "main" / "metrics.jsonl").read_bytes() == before
    assert main(["--resume", "--no-progress", f"train.out_dir={out}"]) == 0  # finished runs: evaluate only
