"""Bad input at the API boundary: ids outside the vocabulary, wrong shapes and dtypes (checked before any compute)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mc_jax.models.generate import decode, prefill
from mc_jax.models.lm import LanguageModel
from mc_jax.models.pure import PureModel
from tests.helpers.model_helpers import tiny


@pytest.fixture(scope="module")
def model():
    return LanguageModel(tiny(memory="linear", aggregation="residual", segment_size=4), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("toks,match", [
    (np.array([[1, 2, 50]]), r"id 50, outside the vocabulary \[0, 50\)"),
    (np.array([[-1, 2, 3]]), r"id -1, outside the vocabulary"),
    (np.array([1, 2, 3]), r"\[batch, length\]"),
    (np.ones((1, 2, 3), np.int32), r"\[batch, length\]"),
    (np.zeros((1, 0), np.int32), "empty"),
    (np.ones((1, 3), np.float32), "integer token ids"),
])
def test_model_rejects_bad_tokens(model, toks, match):
    with pytest.raises(ValueError, match=match):
        model(jnp.asarray(toks))


def test_prefill_and_decode_reject_bad_tokens(model):
    pure, state = PureModel.split(model)
    cache = pure.init_cache(state, 2, 8)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        prefill(pure, state, jnp.array([[1, 2], [3, 77]]), cache)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decode(pure, state, jnp.array([1, 50]), cache)
    with pytest.raises(ValueError, match="one token per row"):
        decode(pure, state, jnp.array([[1], [2]]), cache)
