import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mc_jax.eval.ngram import NGramModel, main, window_cross_entropy


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=8, max_size=60), st.integers(1, 4), st.lists(st.integers(0, 5),
                                                                                           min_size=3, max_size=3))
def test_every_order_is_a_distribution_over_the_vocabulary(train, order, context):
    model = NGramModel(np.array(train), order, vocab=6)
    ctx = np.tile(np.array(context[-(order - 1):] if order > 1 else [], np.int64), (6, 1))
    probs = model.probabilities(ctx, np.arange(6))
    assert probs.shape == (order, 6) and np.all(probs > 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)


def test_witten_bell_by_hand():
    # train "abab a": counts of a = 3, b = 2 (vocab 3: a=0, b=1, c=2)
    model = NGramModel(np.array([0, 1, 0, 1, 0]), 2, vocab=3)
    p1 = lambda x: ({0: 3, 1: 2, 2: 0}[x] + 1) / (5 + 3)
    # context "a": c(a b) = 2, c(a) = 2, T(a) = 1 -> (c(a x) + 1 * p1(x)) / 3
    probs = model.probabilities(np.array([[0], [0], [0]]), np.array([0, 1, 2]))
    np.testing.assert_allclose(probs[1], [(0 + p1(0)) / 3, (2 + p1(1)) / 3, (0 + p1(2)) / 3])
    np.testing.assert_allclose(probs[0], [p1(0), p1(1), p1(2)])


def test_a_periodic_text_is_learned_from_enough_context_and_windows_limit_it():
    period = np.array([3, 1, 4, 1, 5, 9, 2, 6], np.int64)  # 8 tokens: 1 repeats, so order 2 is ambiguous after 1
    text = np.tile(period, 400)
    model = NGramModel(text, 4, vocab=10)
    nats = window_cross_entropy(model, text[:801], seq_len=8, windows=100)
    assert nats[0] > 1.5  # unigram: 7 symbols, "1" twice as often
    # one token of context determines the next one except after "1" (then "4" or "5", equally often: ln 2 for 2 of
    # the 8 labels); two tokens determine every next one (what is left is the interpolation's small mass elsewhere)
    assert nats[1] == pytest.approx(2 / 8 * math.log(2), abs=0.01)
    assert nats[2] < 1e-2 and nats[3] < 1e-2
    assert window_cross_entropy(model, text[:801], seq_len=8, windows=3).shape == (4,)
    with pytest.raises(ValueError, match="no window"):
        window_cross_entropy(model, text[:5], seq_len=8)


def test_context_limits_and_bad_input_are_refused():
    with pytest.raises(ValueError, match="vocab\\^max_order"):
        NGramModel(np.arange(100) % 7, 8, vocab=256)
    with pytest.raises(ValueError, match="token ids in"):
        NGramModel(np.array([0, 1, 2, 300]), 2, vocab=256)


def test_cli_prints_a_table(tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_text("to be or not to be, that is the question. " * 50)
    assert main([str(path), "--max-order", "3", "--seq-len", "32", "--windows", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 3 and float(rows[2].split("|")[4]) < float(rows[0].split("|")[4])
    assert main([str(tmp_path / "missing.txt")]) == 2 and "error:" in capsys.readouterr().err
    assert math.isfinite(float(rows[0].split("|")[3]))
