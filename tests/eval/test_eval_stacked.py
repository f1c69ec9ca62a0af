"""Stacked-MQAR evaluation: accuracy by context position, the task/model checks, the demo, the eval CLI."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from mc_jax.data import (
    IGNORE_INDEX,
    MQARConfig,
    NIAHConfig,
    StackedMQARConfig,
    StackedMQARSource,
    query_key_positions,
)
from mc_jax.eval import (
    EvalError,
    generate_text,
    mqar_accuracy,
    niah_grid,
    stacked_mqar_accuracy,
    stacked_mqar_demo,
    text_perplexity,
)
from mc_jax.eval.cli import main as eval_main
from mc_jax.eval.metrics import _check_pair_tables
from mc_jax.models import PureModel, create_model
from mc_jax.train import train
from tests.helpers.tolerances import assert_close
from tests.helpers.train_helpers import stacked_config, tiny_config  # the tiny run configs shared with tests/train

CFG = StackedMQARConfig(num_kv_pairs=4, num_keys=16, num_values=16)


@pytest.fixture(scope="module")
def pair_model():
    return PureModel.split(create_model(stacked_config().model, seed=0))


@pytest.fixture(scope="module")
def token_model():
    return PureModel.split(create_model(tiny_config("model.vocab_size=256", "train.task.vocab_size=64").model))


@pytest.fixture(scope="module")
def stacked_run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("stacked_eval_run") / "run"
    train(stacked_config(), path, progress=False)
    return path


def _slow_by_position(pure, state, num_examples: int, seed: int):
    """Per context position: (hits, queries), from one forward pass per example and a loop over its queries."""
    src = StackedMQARSource(CFG, num_examples, seed=seed)
    hits, seen = np.zeros(4), np.zeros(4)
    for i in range(num_examples):
        ex = src[i]
        pred = np.asarray(jnp.argmax(pure.apply(state, jnp.asarray(ex["inputs"][None]))[0], -1))
        ctx_keys = ex["inputs"][:4] // 17
        for t in range(4, 8):
            pos = int(np.flatnonzero(ctx_keys == ex["inputs"][t] // 17)[0])
            seen[pos] += 1
            hits[pos] += pred[t] == ex["labels"][t]
    return hits, seen


def test_accuracy_by_position_is_consistent(pair_model):
    pure, state = pair_model
    # 10 examples in batches of 4: the last batch is padded
    r = stacked_mqar_accuracy(pure, state, CFG, num_examples=10, seed=5, batch_size=4, bucket=2)
    assert r["examples"] == 10 and r["queries"] == 40
    assert [b["positions"] for b in r["by_position"]] == [[0, 1], [2, 3]]
    counts = np.array([b["queries"] for b in r["by_position"]])
    assert counts.sum() == 10 * 4 and np.all(counts == 20)  # every context position is queried once per example
    accs = np.array([b["accuracy"] for b in r["by_position"]])
    assert_close((counts * accs).sum() / counts.sum(), r["accuracy"], "float64", "query-weighted mean")
    hits, seen = _slow_by_position(pure, state, 10, seed=5)
    assert_close(accs, [hits[:2].sum() / seen[:2].sum(), hits[2:].sum() / seen[2:].sum()], "float64", "buckets")
    assert_close(r["accuracy"], hits.sum() / 40, "float64", "accuracy")
    assert 0.0 <= r["exact_match"] <= 1.0 and np.isfinite(r["loss"])
    # one bucket per position, and a last bucket shorter than the others; same totals whatever the batching
    single = stacked_mqar_accuracy(pure, state, CFG, num_examples=10, seed=5, batch_size=64, bucket=1)
    assert [b["queries"] for b in single["by_position"]] == [10, 10, 10, 10]
    assert_close([b["accuracy"] for b in single["by_position"]], hits / seen, "float64", "per position")
    assert_close(single["accuracy"], r["accuracy"], "float64", "batching")
    uneven = stacked_mqar_accuracy(pure, state, CFG, num_examples=10, seed=5, batch_size=4, bucket=3)
    assert [b["positions"] for b in uneven["by_position"]] == [[0, 2], [3, 3]]
    assert [b["queries"] for b in uneven["by_position"]] == [30, 10]
    whole = stacked_mqar_accuracy(pure, state, CFG, num_examples=10, seed=5, batch_size=4, bucket=8)
    assert whole["by_position"] == [{"positions": [0, 3], "queries": 40, "accuracy": pytest.approx(r["accuracy"])}]


def test_exact_match_is_per_sequence(pair_model):
    pure, state = pair_model
    r = stacked_mqar_accuracy(pure, state, CFG, num_examples=6, seed=2, batch_size=4, bucket=4)
    src = StackedMQARSource(CFG, 6, seed=2)
    inputs = np.stack([src[i]["inputs"] for i in range(6)])
    labels = np.stack([src[i]["labels"] for i in range(6)])
    pred = np.asarray(jnp.argmax(pure.apply(state, jnp.asarray(inputs)), -1))
    mask = labels != IGNORE_INDEX
    want = np.mean([np.all(pred[i][mask[i]] == labels[i][mask[i]]) for i in range(6)])
    assert r["exact_match"] == pytest.approx(want)
    np.testing.assert_array_equal(query_key_positions(inputs, 16)[:, :4], -1)


@pytest.mark.parametrize("bucket", [0, -2])
def test_bucket_must_be_positive(pair_model, bucket):
    with pytest.raises(EvalError, match=f"bucket must be a positive number of context positions; got {bucket}"):
        stacked_mqar_accuracy(*pair_model, CFG, num_examples=2, bucket=bucket)


def test_demo_shows_the_pairs_and_answers(pair_model):
    pure, state = pair_model
    text = stacked_mqar_demo(pure, state, CFG, seed=7, max_queries=3)
    lines = text.splitlines()
    ex = StackedMQARSource(CFG, 1, seed=7)[0]
    keys, values = ex["inputs"][:4] // 17, ex["inputs"][:4] % 17 - 1
    assert lines[0] == "context pairs (key->value): " + " ".join(f"{k}->{v}" for k, v in zip(keys, values))
    assert len(lines) == 1 + 3
    for line, t in zip(lines[1:], range(4, 7)):
        assert f"query key {ex['inputs'][t] // 17:>4d}" in line and f"true {ex['labels'][t]:>4d}" in line


# ---- task / model checks ---------------------------------------------------------------------------------------------
def test_token_model_is_refused_for_stacked_mqar(token_model):
    with pytest.raises(EvalError, match=r"this model reads token ids \(model.inputs='tokens'\)"):
        stacked_mqar_accuracy(*token_model, CFG, num_examples=2)
    with pytest.raises(EvalError, match="this model reads token ids"):
        stacked_mqar_demo(*token_model, CFG)


def test_table_mismatch_is_refused(pair_model):
    pure, state = pair_model
    for other in (StackedMQARConfig(num_kv_pairs=4, num_keys=32, num_values=16),
                  StackedMQARConfig(num_kv_pairs=4, num_keys=16, num_values=8)):
        with pytest.raises(EvalError, match=rf"vocabulary mismatch: the task has {other.num_keys} keys x "
                                            rf"{other.num_values} values, the model's frozen tables 16 x 16"):
            _check_pair_tables(pure, other)
        with pytest.raises(EvalError, match="vocabulary mismatch"):
            stacked_mqar_accuracy(pure, state, other, num_examples=2)
    _check_pair_tables(pure, StackedMQARConfig(num_kv_pairs=2, num_keys=16, num_values=16))  # kv may differ


def test_pair_model_is_refused_for_token_evaluations(pair_model, tmp_path):
    pure, state = pair_model
    path = tmp_path / "t.txt"
    path.write_text("some text to score " * 4)
    message = r"feeds token ids, but this model reads \(key, value\) pair codes \(model.inputs='pair_table'\)"
    with pytest.raises(EvalError, match="the byte-level text .*" + message):
        text_perplexity(pure, state, path, seq_len=8)
    with pytest.raises(EvalError, match="the MQAR task " + message):
        mqar_accuracy(pure, state, MQARConfig(vocab_size=16, seq_len=8, num_kv_pairs=2), num_examples=2)
    with pytest.raises(EvalError, match="the byte-level NIAH task " + message):
        niah = NIAHConfig(seq_len=48, needle="passkey", passkey_digits=3, template="compact")
        niah_grid(pure, state, niah, [48], [0.5], samples=1)
    with pytest.raises(EvalError, match="byte-level generation " + message):
        generate_text(pure, state, "ab", max_new_tokens=2)


# ---- the eval CLI ----------------------------------------------------------------------------------------------------
def test_eval_cli_on_a_stacked_run(stacked_run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert eval_main([str(stacked_run_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "stacked MQAR (kv=4, L=8, 16 keys x 16 values, 8 sequences): accuracy" in printed
    assert "accuracy by the position of the queried pair in the context (2 positions per bucket):" in printed
    assert "0-1: " in printed and "2-3: " in printed
    assert "context pairs (key->value):" in printed  # the demo (no evaluation flag given)
    (first,) = sorted(out.iterdir())  # one directory per call
    results = json.loads((first / "results.json").read_text())
    r = results["stacked_mqar"]
    assert results["step"] == 6 and r["num_kv_pairs"] == 4 and r["seq_len"] == 8 and r["examples"] == 8
    assert sum(b["queries"] for b in r["by_position"]) == r["queries"] == 32
    # the same held-out set the trainer scored at the end
    final = json.loads((stacked_run_dir / "final.json").read_text())["final_eval"]
    assert r["accuracy"] == pytest.approx(final["accuracy"], abs=1e-9)
    assert_close(r["loss"], final["loss"], "float32", "held-out loss")
    assert "mqar" not in results and "text" not in results and "generation" not in results

    # --mqar with other pairs
    assert eval_main([str(stacked_run_dir), "--out", str(out), "--mqar", "--mqar-kv", "2", "--examples", "3"]) == 0
    printed = capsys.readouterr().out
    assert "stacked MQAR (kv=2, L=4, 16 keys x 16 values, 3 sequences)" in printed
    assert "context pairs" not in printed  # no demo when a flag chose the evaluation
    first, second = sorted(out.iterdir())
    r = json.loads((second / "results.json").read_text())["stacked_mqar"]
    assert r["num_kv_pairs"] == 2 and r["queries"] == 6
    assert json.loads((first / "results.json").read_text())["stacked_mqar"]["num_kv_pairs"] == 4  # kept


def test_eval_cli_refusals_for_a_pair_table_model(stacked_run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert eval_main([str(stacked_run_dir), "--out", str(out), "--mqar", "--mqar-len", "8"]) == 1
    assert "--mqar-len does not apply to stacked MQAR" in capsys.readouterr().err
    assert eval_main([str(stacked_run_dir), "--out", str(out), "--mqar", "--mqar-kv", "32"]) == 1
    err = capsys.readouterr().err
    assert "stacked MQAR with --mqar-kv 32" in err and "num_keys (16) must be at least num_kv_pairs (32)" in err
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 8)
    assert eval_main([str(stacked_run_dir), "--out", str(out), "--text", str(text)]) == 1
    assert "pair codes" in capsys.readouterr().err
    assert eval_main([str(stacked_run_dir), "--out", str(out), "--generate", "ab"]) == 1
    assert "byte-level generation feeds token ids" in capsys.readouterr().err
    assert not out.exists()  # refused calls write nothing
