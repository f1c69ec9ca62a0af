"""The stacked-MQAR training task: config refusals, its data, a tiny run with checkpoints, exact resumption, the results
table."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mc_jax.data import StackedMQARSource
from mc_jax.models import count_params, create_model
from mc_jax.train import Checkpointer, read_metrics, train
from mc_jax.train.cli import format_table
from mc_jax.train.config import TaskConfig, baseline_config, load_run_config
from mc_jax.train.data import DataError, build_task_data
from mc_jax.train.loop import TrainResult
from tests.helpers.train_helpers import stacked_config, tiny_config


# ---- config refusals -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, overrides, message", [
    (stacked_config, ["model.inputs=tokens"],
     r"train.task.kind='stacked_mqar' needs model.inputs='pair_table'; got model.inputs='tokens'"),
    (tiny_config, ["model.inputs=pair_table"],
     r"train.task.kind='mqar' needs model.inputs='tokens'; got model.inputs='pair_table'"),
    (tiny_config, ["model.inputs=pair_table", "train.task.kind=text", "model.vocab_size=256"],
     r"train.task.kind='text' needs model.inputs='tokens'"),
    (stacked_config, ["model.num_keys=32"], r"vocabulary mismatch: train.task.num_keys=16 but model.num_keys=32"),
    (stacked_config, ["model.vocab_size=32"],
     r"vocabulary mismatch: train.task.vocab_size=16 but model.vocab_size=32"),
    (stacked_config, ["train.task.num_keys=8", "model.num_keys=8", "train.task.vocab_size=12"],
     r"train.task.vocab_size=12 but model.vocab_size=16"),
    (stacked_config, ["train.task.seq_len=10"],
     r"train.task \(stacked_mqar\): seq_len must be 2 \* num_kv_pairs = 8 .*got seq_len=10"),
    (stacked_config, ["train.task.num_kv_pairs=5"],
     r"seq_len must be 2 \* num_kv_pairs = 10 .*got seq_len=8"),
    (stacked_config, ["train.task.num_kv_pairs=20", "train.task.seq_len=40"],
     r"train.task \(stacked_mqar\): num_keys \(16\) must be at least num_kv_pairs \(20\)"),
    (stacked_config, ["train.task.num_keys=0"], r"train.task.num_keys must be a positive int; got 0"),
    (stacked_config, ["train.task.eval_seed=0"], r"train.task.eval_seed \(0\) must differ from train.seed"),
])
def test_config_refusals_name_the_fields(make, overrides, message):
    with pytest.raises(ValueError, match=message):
        make(*overrides)


def test_task_config_and_preset():
    task = TaskConfig(kind="stacked_mqar", seq_len=8, num_kv_pairs=4, vocab_size=16, num_keys=16)
    cfg = task.stacked_mqar_config()
    assert (cfg.num_kv_pairs, cfg.num_keys, cfg.num_values) == (4, 16, 16)
    assert task.data_vocab == cfg.input_vocab == 16 * 17 == stacked_config().model.input_vocab
    preset = load_run_config()  # the default of train.py
    assert preset.model.inputs == "pair_table" and preset.train.task.kind == "stacked_mqar"
    base = baseline_config(preset)
    assert base.model.inputs == "pair_table" and base.model.layer_kinds == ("none",)
    assert (base.model.num_keys, base.model.vocab_size) == (preset.model.num_keys, preset.model.vocab_size)


def test_task_data_are_the_stacked_sources():
    config = stacked_config()
    data = build_task_data(config, eval_batch_size=3)
    task = config.train.task
    train_src = StackedMQARSource(task.stacked_mqar_config(), 100, seed=config.train.seed)
    held = StackedMQARSource(task.stacked_mqar_config(), task.eval_examples, seed=task.eval_seed)
    it = data.iterator()
    for b in range(2):
        batch = next(it)
        assert batch["inputs"].shape == (4, 8) and batch["inputs"].dtype == np.int32
        for r in range(4):
            np.testing.assert_array_equal(batch["inputs"][r], train_src[4 * b + r]["inputs"])
            np.testing.assert_array_equal(batch["labels"][r], train_src[4 * b + r]["labels"])
    rows = np.concatenate([e["inputs"] for e in data.eval_batches])
    assert rows.shape == (8, 8)
    np.testing.assert_array_equal(rows, np.stack([held[i]["inputs"] for i in range(8)]))
    assert "stacked MQAR kv=4" in data.description
    # build_task_data's own guard (used without RunConfig's checks): the data's codes must fit the model's inputs
    small = stacked_config().model.replace(num_keys=8)
    with pytest.raises(DataError, match=r"vocabulary mismatch: the data uses 272 ids, the model reads 136"):
        build_task_data(_unchecked(config, small))


def _unchecked(config, model):
    """``config`` with ``model`` swapped in, bypassing RunConfig's cross checks (as a direct caller could)."""
    out = object.__new__(type(config))
    for name in ("train", "mesh"):
        object.__setattr__(out, name, getattr(config, name))
    object.__setattr__(out, "model", model)
    return out


# ---- a tiny run ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stacked_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("stacked_run") / "run"
    result = train(stacked_config(), path, progress=False)
    return path, result


def test_tiny_stacked_run_trains_and_checkpoints(stacked_run):
    path, result = stacked_run
    assert sorted(result.losses) == list(range(1, 7))
    assert all(np.isfinite(v) for v in result.losses.values())
    assert abs(result.losses[1] - np.log(16)) < 0.5  # chance over 16 values at initialisation
    assert Checkpointer(path, read_only=True).all_steps() == [3, 6]
    ev = result.final_eval
    assert np.isfinite(ev["loss"]) and 0.0 <= ev["accuracy"] <= 1.0 and 0.0 <= ev["exact_match"] <= ev["accuracy"]
    # parameters: the token model's minus its tied embedding (vocab x d), plus W_in (2d x d) and W_out (d x d)
    token_model = create_model(stacked_config().model.replace(inputs="tokens"))
    assert result.num_params == count_params(token_model) - 16 * 16 + 3 * 16 * 16
    metrics = read_metrics(path / "metrics.jsonl")
    assert [r["step"] for r in metrics if r["split"] == "train"] == list(range(1, 7))


def test_resume_from_step_3_reproduces_the_losses(stacked_run, tmp_path):
    path, reference = stacked_run
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    shutil.rmtree(copy / "checkpoints" / "6")
    (copy / "final.json").unlink()
    assert Checkpointer(copy, read_only=True).latest_step() == 3
    resumed = train(stacked_config(), copy, resume=True, progress=False)
    assert resumed.resumed_from == 3
    assert sorted(resumed.losses) == [4, 5, 6]
    assert resumed.losses == {s: reference.losses[s] for s in (4, 5, 6)}  # bit-identical
    assert resumed.final_eval == reference.final_eval
    logged = {r["step"]: r["loss"] for r in read_metrics(copy / "metrics.jsonl") if r["split"] == "train"}
    assert logged == reference.losses


# ---- the results table -----------------------------------------------------------------------------------------------
def _result(config, accuracy: float, name: str) -> TrainResult:
    return TrainResult(run_dir=name, config=config, step=6, num_params=1234,
                       final_eval={"loss": 1.5, "accuracy": accuracy, "exact_match": 0.0, "perplexity": 4.48},
                       train_loss=1.6, tokens_per_s=1000.0, train_seconds=2.0, wall_seconds=3.0)


def test_format_table_for_a_stacked_task_with_a_baseline():
    main = stacked_config("train.baseline=none")
    base = baseline_config(main)
    table = format_table([("main", _result(main, 0.5, "m")), ("baseline", _result(base, 0.2, "b"))])
    lines = table.splitlines()
    assert "recall acc" in lines[0] and "val ppl" not in lines[0]
    assert "50.0%" in lines[2] and "20.0%" in lines[3]
    assert lines[-1] == ("memory caching: 50.0% vs 20.0% without caching (2.50x, +30.0 points) on 8 held-out "
                         "stacked MQAR sequences (L=8, kv=4)")
    # a token MQAR table says MQAR, not stacked
    tok = tiny_config()
    token_table = format_table([("main", _result(tok, 0.5, "m")), ("baseline", _result(tok, 0.0, "b"))])
    assert "recall acc" in token_table.splitlines()[0]
    assert token_table.splitlines()[-1].endswith("(inf, +50.0 points) on 8 held-out MQAR sequences (L=16, kv=2)")
    # one run: no comparison line
    assert "memory caching" not in format_table([("main", _result(main, 0.5, "m"))])


def test_curriculum_applies_to_training_examples_only():
    config = stacked_config("train.task.min_kv_pairs=1", "train.batch_size=64")
    data = build_task_data(config)
    labelled = (next(data.iterator())["labels"] != -100).sum(axis=1)
    assert labelled.min() >= 1 and labelled.max() <= 4 and len(set(labelled.tolist())) > 1
    held = np.concatenate([(b["labels"] != -100).sum(axis=1) for b in data.eval_batches])
    assert np.all(held == 4), "held-out sequences always have num_kv_pairs pairs"
    assert "training kv=1-4" in data.description
    with pytest.raises(ValueError, match="train.task.min_kv_pairs must be a non-negative int"):
        stacked_config("train.task.min_kv_pairs=-1")
    with pytest.raises(ValueError, match=r"min_kv_pairs must be an int in \[1, num_kv_pairs=4\]"):
        stacked_config("train.task.min_kv_pairs=5")
