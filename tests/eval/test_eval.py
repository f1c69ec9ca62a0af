"""Evaluation: loading train.py checkpoints (and refusing mismatches), perplexity, MQAR, NIAH grid + heatmap, generation,
the eval CLI."""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib

import jax.numpy as jnp
import numpy as np
import pytest

from mc_jax.data import MQARConfig, MQARSource, NIAHConfig, NIAHSource
from mc_jax.eval import (
    EvalError,
    generate_text,
    heatmap_image,
    load_checkpoint,
    mqar_accuracy,
    niah_csv,
    niah_grid,
    niah_table,
    text_perplexity,
    write_png,
)
from mc_jax.eval.cli import main as eval_main
from mc_jax.eval.metrics import score_rows
from mc_jax.eval.png import read_png_size
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


def _decode_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + n
    w, h, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + w * 3)
    assert np.all(raw[:, 0] == 0)
    return raw[:, 1:].reshape(h, w, 3)


# ---- loading -------------------------------------------------------------------------------------------------------------
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
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["mqar"]["accuracy"] <= 1.0 and results["step"] == 6
    assert isinstance(results["generation"]["output"], str)
    assert eval_main([str(run_dir), "model.d_model=32", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "different model config" in err and "model.d_model: 16 (checkpoint) vs 32 (requested)" in err
    assert eval_main([str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


# ---- metrics ---------------------------------------------------------------------------------------------------------------
def test_text_perplexity_of_a_random_model(random_byte_model, tmp_path):
    pure, state = random_byte_model
    path = tmp_path / "t.txt"
    path.write_text("The grass is green. The sky is blue. " * 20)
    r = text_perplexity(pure, state, path, seq_len=64, batch_size=4)
    assert r["tokens"] == len(path.read_text()) - 1
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
    lines = niah_table(grid).splitlines()
    assert lines[0] == "| depth \\ length | 48 | 64 | mean |" and len(lines) == 6
    assert lines[2] == "| 0.00 | 100.0 | 50.0 | 75.0 |" and lines[-1] == "| mean | 66.7 | 58.3 | 62.5 |"
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


# ---- PNG / heatmap ---------------------------------------------------------------------------------------------------------
def test_png_writer_round_trip(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    write_png(tmp_path / "a.png", img)
    np.testing.assert_array_equal(_decode_png(tmp_path / "a.png"), img)
    values = np.array([[0.0, 0.5], [1.0, np.nan], [0.25, 0.75]])
    heat = heatmap_image(values, ["0.00", "0.50", "1.00"], ["64", "128"])
    write_png(tmp_path / "h.png", heat)
    w, h = read_png_size(tmp_path / "h.png")
    assert (h, w) == heat.shape[:2] and h > 3 * 48 and w > 2 * 48
    with pytest.raises(ValueError):
        write_png(tmp_path / "bad.png", img.astype(np.float32))


def test_eval_cli_niah_writes_table_and_heatmap(run_dir, tmp_path):
    out = tmp_path / "niah"
    code = eval_main([str(run_dir), "--niah", "--niah-lengths", "48", "--niah-depths", "0,1", "--niah-samples",
                      "2", "--out", str(out)])
    assert code == 0
    assert (out / "niah.md").read_text().startswith("| depth \\ length | 48 |")
    assert len((out / "niah.csv").read_text().splitlines()) == 1 + 2
    w, h = read_png_size(out / "niah.png")
    assert w > 0 and h > 0
