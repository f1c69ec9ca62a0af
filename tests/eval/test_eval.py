"""Evaluation: loading train.py checkpoints (and refusing mismatches), perplexity, MQAR, NIAH grid + heatmap,
generation, the eval CLI."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from mc_jax.data import MQARConfig, MQARSource, NIAHConfig, NIAHSource
from mc_jax.eval import (
    EvalError,
    generate_text,
    load_checkpoint,
    mqar_accuracy,
    niah_csv,
    niah_grid,
    niah_table,
    text_perplexity,
)
from mc_jax.eval.cli import main as eval_main
from mc_jax.eval.metrics import score_rows
from mc_jax.models import PureModel, create_model, generate
from mc_jax.train import CheckpointError, train
from tests.helpers.train_helpers import tiny_config  # the tiny run config shared with tests/train and tests/parallel


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny byte-level model trained for a few steps on MQAR (vocab 256 so text/NIAH/generation also apply)."""
    path = tmp_path_factory.mktemp("eval_run") / "run"
    config = tiny_config("model.vocab_size=256", "train.task.vocab_size=64", "train.steps=6", "train.ckpt_every=3")
    train(config, path, progress=False)
    return path


@pytest.fixture(scope="module")
def random_byte_model():
    config = tiny_config("model.vocab_size=256", "train.task.vocab_size=64")
    return PureModel.split(create_model(config.model, seed=0))


def _results(out: Path) -> list[Path]:
    """The per-call result directories under an eval output parent, oldest first."""
    return sorted(p for p in out.iterdir() if p.is_dir())


# ---- loading ---------------------------------------------------------------------------------------------------------
def test_load_checkpoint_matches_training_and_refuses_mismatches(run_dir):
    run = load_checkpoint(run_dir)
    assert run.step == 6 and run.config.model.vocab_size == 256
    final = json.loads((run_dir / "final.json").read_text())["final_eval"]
    task = run.config.train.task
    r = mqar_accuracy(run.pure, run.state, task.mqar_config(), num_examples=task.eval_examples, seed=task.eval_seed)
    assert r["accuracy"] == pytest.approx(final["accuracy"], abs=1e-9)
    assert r["loss"] == pytest.approx(final["loss"], rel=1e-5)
    assert load_checkpoint(run_dir / "checkpoints" / "3").step == 3
    assert load_checkpoint(run_dir, step=3).step == 3
    with pytest.raises(CheckpointError, match="no checkpoint for step 4"):
        load_checkpoint(run_dir, step=4)
    other = tiny_config("model.vocab_size=256", "train.task.vocab_size=64", "model.mixer.segment_size=4")
    with pytest.raises(CheckpointError, match=r"model.mixer.segment_size: 8 \(checkpoint\) vs 4 \(requested\)"):
        load_checkpoint(run_dir, expect=other)
    same_model = tiny_config("model.vocab_size=256", "train.task.vocab_size=64", "train.lr=0.5")
    assert load_checkpoint(run_dir, expect=same_model).step == 6  # training settings may differ
    with pytest.raises(CheckpointError, match="not a run directory"):
        load_checkpoint(run_dir / "final.json")


def test_eval_cli_end_to_end_and_mismatch_refusal(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert eval_main([str(run_dir), "--out", str(out), "--generate", "ab", "--max-new-tokens", "4", "--mqar"]) == 0
    printed = capsys.readouterr().out
    (first,) = _results(out)
    assert first.name.endswith("-step6")
    results = json.loads((first / "results.json").read_text())
    assert 0.0 <= results["mqar"]["accuracy"] <= 1.0 and results["step"] == 6
    generated = results["generation"]["output"]
    assert isinstance(generated, str) and f"ab{generated}\n" in printed  # printed as text, not as a repr
    # a second call keeps the first call's results; options may come after the overrides (and the other way round)
    assert eval_main([str(run_dir), "--mqar", "--out", str(out), "--examples", "8", "--no-progress"]) == 0
    assert len(_results(out)) == 2 and (first / "results.json").exists()
    assert json.loads((_results(out)[1] / "results.json").read_text())["mqar"]["examples"] == 8
    assert eval_main([str(run_dir), "model.d_model=32", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "different model config" in err and "model.d_model: 16 (checkpoint) vs 32 (requested)" in err
    assert eval_main([str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--mqar-kv", "--examples", "--seq-len", "--niah-samples", "--max-tokens",
                                  "--max-new-tokens", "--mqar-len"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_eval_cli_refuses_zero_and_negative_counts(run_dir, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exc:
        eval_main([str(run_dir), "--mqar", f"{flag}={value}", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert f"argument {flag}: must be > 0, got '{value}'" in capsys.readouterr().err
    assert not tmp_path.joinpath("x").exists() and list(tmp_path.iterdir()) == []  # nothing was evaluated


def test_eval_cli_text_split_max_tokens_and_sampling(run_dir, tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_text("".join(chr(97 + i % 26) for i in range(2000)))
    out = tmp_path / "out"
    args = [str(run_dir), "--text", str(path), "--out", str(out), "--seq-len", "32", "--no-progress"]
    assert eval_main(args) == 0  # default: the held-out trailing 10%
    assert eval_main([*args, "--split", "all", "--max-tokens", "100"]) == 0
    assert eval_main([*args, "--split", "train"]) == 0
    val, capped, train_part = (json.loads((d / "results.json").read_text())["text"] for d in _results(out))
    assert (val["split"], val["tokens"]) == ("val", 200 - 1)
    assert (capped["split"], capped["tokens"]) == ("all", 100)
    assert (train_part["split"], train_part["tokens"]) == ("train", 1800 - 1)
    capsys.readouterr()
    sample = [str(run_dir), "--generate", "ab", "--temperature", "1.0", "--top-p", "0.9", "--max-new-tokens", "6",
              "--out", str(out)]
    texts = []
    for seed in ("1", "1", "2"):
        assert eval_main([*sample, "--seed", seed]) == 0
        texts.append(json.loads((_results(out)[-1] / "results.json").read_text())["generation"])
    assert texts[0] == texts[1] and texts[0]["top_p"] == 0.9 and texts[0]["seed"] == 1  # a seed reproduces
    assert "temperature 1.0, top-p 0.9, seed 1" in capsys.readouterr().out
    for bad in (["--top-p", "0"], ["--top-p", "1.5"], ["--split", "test"]):
        with pytest.raises(SystemExit):
            eval_main([*sample, *bad])


# ---- metrics ---------------------------------------------------------------------------------------------------------
def test_text_perplexity_of_a_random_model(random_byte_model, tmp_path):
    pure, state = random_byte_model
    path = tmp_path / "t.txt"
    path.write_text("The grass is green. The sky is blue. " * 20)
    r = text_perplexity(pure, state, path, seq_len=64, batch_size=4, split="all")
    assert r["tokens"] == len(path.read_text()) - 1
    val = text_perplexity(pure, state, path, seq_len=64, batch_size=4)  # the held-out trailing 10%
    assert val["split"] == "val" and val["tokens"] == round(0.1 * len(path.read_text())) - 1
    assert r["perplexity"] == pytest.approx(np.exp(r["loss"]), rel=1e-6)
    assert 150 < r["perplexity"] < 400  # near-uniform over 256 bytes at initialisation
    assert r["bits_per_byte"] == pytest.approx(r["loss"] / np.log(2))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(EvalError, match="empty"):
        text_perplexity(pure, state, empty)
    small = PureModel.split(create_model(tiny_config().model))
    with pytest.raises(EvalError, match="vocabulary mismatch"):
        text_perplexity(*small, path)


def test_mqar_accuracy_of_a_random_model(random_byte_model):
    pure, state = random_byte_model
    cfg = MQARConfig(vocab_size=64, seq_len=16, num_kv_pairs=2)
    r = mqar_accuracy(pure, state, cfg, num_examples=10, batch_size=4)
    assert r["queries"] == 20 and 0.0 <= r["accuracy"] <= 0.2 and r["exact_match"] <= r["accuracy"] + 1e-9
    with pytest.raises(EvalError, match="vocabulary mismatch"):
        mqar_accuracy(pure, state, MQARConfig(vocab_size=512, seq_len=16, num_kv_pairs=2), num_examples=2)


def test_niah_grid_table_and_teacher_forced_equals_greedy(random_byte_model):
    pure, state = random_byte_model
    base = NIAHConfig(needle="passkey", haystack="noise", template="compact", passkey_digits=3, seq_len=48)
    grid = niah_grid(pure, state, base, [48], [0.0, 0.5, 1.0], samples=3, batch_size=3)
    assert grid["exact"].shape == (3, 1) and np.all((grid["exact"] >= 0) & (grid["exact"] <= 1))
    assert np.all((grid["char_accuracy"] >= 0) & (grid["char_accuracy"] <= 1))
    decoded = niah_grid(pure, state, base, [48], [0.0, 0.5, 1.0], samples=3, batch_size=3, decode=True)
    np.testing.assert_array_equal(decoded["exact"], grid["exact"])
    # Teacher forcing and greedy decoding agree on the first answer token (the rest follows by induction).
    ex = NIAHSource(dataclasses.replace(base, depth=0.5), 1, seed=5).example(0)
    logits = pure.apply(state, jnp.asarray(ex.tokens[None, :-1]))
    first_tf = int(np.argmax(np.asarray(logits)[0, -base.answer_len]))
    first_gen = int(np.asarray(generate(pure, state, ex.tokens[None, :-base.answer_len], max_new_tokens=1))[0, -1])
    assert first_tf == first_gen


def test_niah_table_layout():
    grid = {"lengths": [48, 64], "depths": [0.0, 0.5, 1.0], "exact": np.array([[1.0, 0.5], [0.0, 0.25], [1.0, 1.0]]),
            "char_accuracy": np.ones((3, 2)), "samples": 4}
    grid["char_accuracy"][1, 1] = 0.5
    lines = niah_table(grid).splitlines()  # exact match / per-character accuracy
    assert lines[0] == "| depth \\ length | 48 | 64 | mean |" and len(lines) == 6
    assert lines[2] == "| 0.00 | 100.0 / 100.0 | 50.0 / 100.0 | 75.0 / 100.0 |"
    assert lines[3] == "| 0.50 | 0.0 / 100.0 | 25.0 / 50.0 | 12.5 / 75.0 |"
    assert lines[-1] == "| mean | 66.7 / 100.0 | 58.3 / 83.3 | 62.5 / 91.7 |"
    csv = niah_csv(grid).splitlines()
    assert csv[0] == "depth,length,exact_match,char_accuracy,samples" and len(csv) == 7


def test_score_rows_pads_without_changing_scores(random_byte_model):
    pure, state = random_byte_model
    src_cfg = MQARConfig(vocab_size=64, seq_len=16, num_kv_pairs=2)
    rows = [MQARSource(src_cfg, 5, seed=0)[i] for i in range(5)]
    a, b = score_rows(pure, state, rows, batch_size=5), score_rows(pure, state, rows, batch_size=2)
    assert a["rows"] == b["rows"] == 5
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["accuracy"] == b["accuracy"]


def test_generation_demo(random_byte_model):
    pure, state = random_byte_model
    text = generate_text(pure, state, "Hello", max_new_tokens=5)
    assert isinstance(text, str)
    assert generate_text(pure, state, "Hello", max_new_tokens=5) == text  # greedy is deterministic
    with pytest.raises(EvalError, match="empty"):
        generate_text(pure, state, "")


# ---- heatmap ---------------------------------------------------------------------------------------------------------
def test_eval_cli_niah_writes_table_and_heatmap(run_dir, tmp_path, capsys):
    from matplotlib.image import imread

    out = tmp_path / "niah"
    code = eval_main([str(run_dir), "--niah", "--niah-lengths", "48", "--niah-depths", "0,1", "--niah-samples",
                      "2", "--out", str(out)])
    assert code == 0
    (res,) = _results(out)
    assert (res / "niah.md").read_text().startswith("| depth \\ length | 48 |")
    assert len((res / "niah.csv").read_text().splitlines()) == 1 + 2
    assert "exact match / per-character accuracy (%), 2 samples per cell" in capsys.readouterr().out
    image = imread(res / "niah.png")  # a real matplotlib figure: two panels, a colour bar, text
    h, w = image.shape[:2]
    assert h > 150 and w > 400 and image.shape[2] in (3, 4)
    assert len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 50  # not a blank canvas
    assert json.loads((res / "results.json").read_text())["niah"]["heatmap"] == str(res / "niah.png")


def test_the_eval_cli_shares_helpers_with_train_but_does_not_import_it():
    import subprocess

    code = ("import sys, mc_jax.eval.cli; assert 'mc_jax.cli_common' in sys.modules; "
            "assert 'mc_jax.train.cli' not in sys.modules, 'eval imports the training CLI'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
