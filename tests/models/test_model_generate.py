"""Generation: sampling rules, per-row prompt lengths (each row computed as if alone), eos, argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mc_jax.models.generate import _generate, generate, sample_token
from mc_jax.models.pure import PureModel
from tests.helpers.model_helpers import tiny, tokens
from tests.helpers.tolerances import assert_allclose

LENGTHS, NEW = [5, 2, 7], 6


@pytest.fixture(scope="module")
def model():
    # a hybrid: MC (segments of 3) and sliding-window attention, so both kinds of cache are exercised
    cfg = tiny(num_layers=2, pattern=("mc", "sliding_window"), memory="gated_linear", segment_size=3, window=4)
    return PureModel.create(cfg, seed=5)


def assert_greedy(logits_rows, chosen):
    """``chosen`` is an argmax of every row of logits (up to float ties)."""
    picked = np.take_along_axis(np.asarray(logits_rows), np.asarray(chosen)[:, None], axis=-1)[:, 0]
    np.testing.assert_array_less(np.asarray(logits_rows).max(-1) - picked, 1e-4)


def test_greedy_per_row_lengths_match_the_full_forward(model):
    pure, state = model
    prompts = np.asarray(tokens(3, 7, seed=6))
    junk = np.where(np.arange(7)[None] < np.asarray(LENGTHS)[:, None], prompts, 99)  # padding may hold anything
    out = generate(pure, state, prompts, lengths=LENGTHS, max_new_tokens=NEW)
    assert out.shape == (3, max(LENGTHS) + NEW)
    np.testing.assert_array_equal(generate(pure, state, junk, lengths=LENGTHS, max_new_tokens=NEW), out)
    logits = jax.jit(pure.apply)(state, out)  # teacher forcing: the generated rows under the full forward
    for b, n in enumerate(LENGTHS):
        np.testing.assert_array_equal(out[b, :n], prompts[b, :n])
        assert_greedy(logits[b, n - 1 : n + NEW - 1], out[b, n : n + NEW])
        assert np.all(np.asarray(out[b, n + NEW :]) == 0)  # pad after the row's budget
    # eos: row 0 stops at its first generated token, the rest of the row is padding
    eos = int(out[0, LENGTHS[0]])
    stopped = generate(pure, state, prompts, lengths=LENGTHS, max_new_tokens=NEW, eos_id=eos, pad_id=1)
    np.testing.assert_array_equal(stopped[0, : LENGTHS[0] + 1], out[0, : LENGTHS[0] + 1])
    assert np.all(np.asarray(stopped[0, LENGTHS[0] + 1 :]) == 1)


def test_sampling_is_reproducible_and_stays_in_the_nucleus(model):
    pure, state = model
    prompts = tokens(3, 7, seed=7)
    kw = dict(lengths=LENGTHS, max_new_tokens=NEW, temperature=0.7, top_p=0.9)
    a = generate(pure, state, prompts, key=jax.random.key(1), **kw)
    compiled = _generate._cache_size()
    b = generate(pure, state, prompts, key=jax.random.key(1), **kw)
    np.testing.assert_array_equal(a, b)
    generate(pure, state, prompts, key=jax.random.key(1), **kw | dict(temperature=1.3, top_p=0.5))
    assert _generate._cache_size() == compiled  # sampling settings are traced: no recompilation
    assert int(a.min()) >= 0 and int(a.max()) < 50


def test_sample_token_rules():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.2]] * 4000))
    np.testing.assert_array_equal(sample_token(logits, None), 0)
    key = jax.random.key(0)
    np.testing.assert_array_equal(sample_token(logits, key, temperature=1.0, top_p=0.01), 0)  # nucleus of one
    draws = np.asarray(sample_token(logits, key, temperature=1.0))
    assert_allclose(np.bincount(draws, minlength=3) / 4000, [0.5, 0.3, 0.2], "sampling")
    nucleus = np.asarray(sample_token(logits, key, temperature=1.0, top_p=0.6))  # {0, 1}: 0.5 < 0.6 <= 0.8
    assert set(np.unique(nucleus)) == {0, 1}
    assert_allclose(np.mean(nucleus == 0), 0.5 / 0.8, "sampling")
    cold = np.asarray(sample_token(logits, key, temperature=0.05))
    assert np.mean(cold == 0) > 0.99
    with pytest.raises(ValueError):
        sample_token(logits, key, temperature=1.0, top_p=0.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lengths=[0, 2, 3]), "lengths must lie"),
    (dict(lengths=[1, 2, 9]), "lengths must lie"),
    (dict(lengths=[1, 2]), "lengths must be integers of shape"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=1.0), "needs a PRNG key"),
    (dict(eos_id=50), "outside the vocabulary"),
])
def test_generate_argument_errors(model, kwargs, match):
    pure, state = model
    kw = dict(max_new_tokens=2) | kwargs
    with pytest.raises(ValueError, match=match):
        generate(pure, state, tokens(3, 7), **kw)


def test_generate_rejects_bad_prompts(model):
    pure, state = model
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(pure, state, jnp.full((2, 4), 50), max_new_tokens=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(pure, state, jnp.array([[1, -1, 3]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="integer"):
        generate(pure, state, jnp.ones((2, 4)), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        generate(pure, state, jnp.ones((4,), jnp.int32), max_new_tokens=2)
