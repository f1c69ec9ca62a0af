"""train.py's command line: dotted overrides shared with the model config, the baseline run, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mc_jax.cli_common import parse_args
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
    assert config.train.baseline == "none,attention" and config.train.baselines == ("none", "attention")
    base = baseline_config(config)
    assert base.model.mixer.kind == "none" and base.train.baseline == ""
    assert config_diff(config, base, sections=("model.",)) == [
        "model.mixer.kind: 'mc' (checkpoint) vs 'none' (requested)"]
    attention = baseline_config(config, "attention")  # the ceiling: the same model with softmax attention
    assert attention.model.mixer.kind == "attention" and attention.train == base.train
    assert config.train.out_dir == "runs/tiny_mqar"


def test_cli_parses_overrides_into_model_and_train_sections():
    args = build_parser().parse_args(["model.mixer.aggregation=ssc", "model.mixer.top_k=2", "train.steps=200",
                                      "train.task.num_kv_pairs=4", "train.baseline=", "--preset", PRESET])
    (name, config, run_dir), = resolve_configs(args)
    assert name == "main" and run_dir.name == "main"
    assert config.model.mixer.aggregation == "ssc" and config.model.mixer.top_k == 2
    assert config.train.steps == 200 and config.train.task.num_kv_pairs == 4 and config.train.baseline == ""
    runs = resolve_configs(build_parser().parse_args(["train.out_dir=/tmp/x"]))
    assert [(n, str(d)) for n, _, d in runs] == [("main", "/tmp/x/main"), ("baseline", "/tmp/x/baseline"),
                                                 ("attention", "/tmp/x/attention")]
    assert [c.model.mixer.kind for _, c, _ in runs] == ["mc", "none", "attention"]


def test_overrides_anywhere_on_the_command_line():
    args = parse_args(build_parser(), ["train.steps=30", "--no-progress", "train.seed=1", "--preset", PRESET,
                                       "model.d_model=8"])
    assert args.no_progress and args.preset == PRESET
    assert args.overrides == ["train.steps=30", "train.seed=1", "model.d_model=8"]
    (_, config, _), *_ = resolve_configs(args)
    assert config.train.steps == 30 and config.train.seed == 1 and config.model.d_model == 8


def test_output_directory_per_preset(tmp_path):
    assert load_run_config("train_token_mqar").train.out_dir == "runs/token_mqar"  # the preset's own choice
    for name in ("tiny", "small", "paper_760m"):  # model-only presets: runs/<preset name>
        assert load_run_config(name, ["train.baseline="]).train.out_dir == f"runs/{name}"
    path = tmp_path / "my_exp.py"
    path.write_text("from mc_jax.config import ModelConfig\nCONFIG = ModelConfig(vocab_size=256, d_model=16)\n")
    assert load_run_config(str(path)).train.out_dir == "runs/my_exp"
    assert load_run_config("tiny", ["train.out_dir=elsewhere"]).train.out_dir == "elsewhere"


def test_presets_are_package_data_and_listed(capsys):
    from mc_jax.configs_util import preset_names

    assert {"train_tiny_mqar", "train_token_mqar", "tiny", "small", "paper_760m", "paper_1_3b"} <= set(preset_names())
    assert main(["--list-presets"]) == 0
    assert capsys.readouterr().out.split() == preset_names()
    with pytest.raises(ValueError, match=r"no preset 'nope'; shipped presets: \["):
        load_run_config("nope")
    with pytest.raises(ValueError, match="no preset file"):
        load_run_config("missing.py")


def test_baseline_list_is_validated():
    for bad in ("nonee", "none,none", "none,bogus"):
        with pytest.raises(ValueError, match="must be '' \\(no baseline\\) or distinct mixer kinds"):
            load_run_config(None, [f"train.baseline={bad}"])


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
    captured = capsys.readouterr()
    printed = captured.out
    assert "memory caching:" in printed and "without caching" in printed
    # --no-progress hides the bar, not the log lines
    assert "[main 1/2] " in captured.err and "[baseline 2/2] done: eval loss" in captured.err
    assert "it/s" not in captured.err and "step/s" not in captured.err
    assert (out / "curves.png").exists() and (out / "main" / "curves.png").exists()
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


def test_a_mesh_larger_than_the_devices_hints_at_simulated_devices():
    from mc_jax.parallel.mesh import MeshConfig

    with pytest.raises(ValueError, match=r"the mesh has 16 devices but 8 are available .*on one CPU, simulate 16 "
                                         r"devices with XLA_FLAGS=--xla_force_host_platform_device_count=16"):
        MeshConfig(data=2, fsdp=8).resolve(8)
    with pytest.raises(ValueError) as err:
        MeshConfig(data=3).resolve(8)  # fewer than available: no simulation hint
    assert "simulate" not in str(err.value)
