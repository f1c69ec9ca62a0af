"""Frozen pair tables (stacked MQAR input/output): unit rows, embedding and read-out against numpy, the model built on
them (no embedding/head, tables not parameters, code checks, gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mc_jax.config import MixerConfig, ModelConfig
from mc_jax.data import StackedMQARConfig, StackedMQARSource, pair_codes
from mc_jax.layers.pair_table import PairTableIO, pair_tables, unit_table
from mc_jax.models import PureModel, count_params, create_model
from mc_jax.train.optim import param_path
from tests.helpers.tolerances import assert_close

NK, NV, D = 12, 10, 8
CONFIG = ModelConfig(inputs="pair_table", vocab_size=NV, num_keys=NK, d_model=D, num_layers=1, num_heads=1,
                     scan_layers=False, table_seed=3,
                     mixer=MixerConfig(kind="mc", memory="linear", aggregation="grm", segment_size=2))


def _numpy_table(rows: int, dim: int, seed: int, stream: int) -> np.ndarray:
    """The documented construction: unit-norm Gaussian rows from ``SeedSequence([seed, stream])`` (float64)."""
    t = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream]))).standard_normal((rows, dim))
    return t / np.linalg.norm(t, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def model():
    return create_model(CONFIG, seed=1)


# ---- unit_table ------------------------------------------------------------------------------------------------------
def test_unit_table_rows_unit_norm_deterministic_and_read_only():
    t = unit_table(50, 16, 7, 0)
    assert t.shape == (50, 16) and t.dtype == np.float32
    assert_close(np.linalg.norm(t.astype(np.float64), axis=-1), np.ones(50), "float32", "row norms")
    assert_close(t, _numpy_table(50, 16, 7, 0), "float32", "documented construction")
    unit_table.cache_clear()
    again = unit_table(50, 16, 7, 0)
    assert again is not t and np.array_equal(again, t)  # recomputed, identical
    assert not t.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        t[0, 0] = 1.0
    for other in (unit_table(50, 16, 8, 0), unit_table(50, 16, 7, 1)):
        assert not np.allclose(other, t)
    # rows are not degenerate: distinct rows are far from parallel
    gram = t @ t.T
    assert np.max(np.abs(gram - np.diag(np.diag(gram)))) < 0.999


def test_pair_tables_shapes_streams_and_seed():
    keys, values = pair_tables(CONFIG)
    assert keys.shape == (NK, D) and values.shape == (NV, D)
    assert_close(keys, _numpy_table(NK, D, 3, 0), "float32", "key table")
    assert_close(values, _numpy_table(NV, D, 3, 1), "float32", "value table")
    same = CONFIG.replace(num_keys=NV)  # equal shapes: the key and value tables still differ (separate streams)
    k2, v2 = pair_tables(same)
    assert k2.shape == v2.shape and not np.allclose(k2, v2)
    assert not np.allclose(pair_tables(CONFIG.replace(table_seed=4))[0], keys)


# ---- PairTableIO -----------------------------------------------------------------------------------------------------
def _codes(rng: np.random.Generator, shape) -> np.ndarray:
    keys = rng.integers(0, NK, shape)
    values = rng.integers(-1, NV, shape)
    values.flat[0] = -1  # at least one query
    values.flat[-1] = NV - 1  # and the last value row
    return pair_codes(keys, values, NV)


def test_embed_equals_numpy_construction():
    io = PairTableIO(CONFIG, rngs=nnx.Rngs(0))
    codes = _codes(np.random.default_rng(0), (3, 7))
    K, V = _numpy_table(NK, D, 3, 0), _numpy_table(NV, D, 3, 1)
    W = np.asarray(io.in_proj.kernel[...], np.float64)
    assert W.shape == (2 * D, D)
    want = np.zeros(codes.shape + (D,))
    for idx in np.ndindex(codes.shape):
        key, value = divmod(int(codes[idx]), NV + 1)
        value -= 1
        vec = np.concatenate([K[key], V[value] if value >= 0 else np.zeros(D)])
        want[idx] = vec @ W
    got = io.embed(jnp.asarray(codes))
    assert got.shape == (3, 7, D) and got.dtype == jnp.float32
    assert_close(got, want, "float32", "embed")


def test_logits_are_dot_products_with_the_value_table():
    io = PairTableIO(CONFIG, rngs=nnx.Rngs(1))
    h = np.random.default_rng(1).standard_normal((2, 5, D)).astype(np.float32)
    V = _numpy_table(NV, D, 3, 1)
    want = h.astype(np.float64) @ np.asarray(io.out_proj.kernel[...], np.float64) @ V.T
    got = io.logits(jnp.asarray(h))
    assert got.shape == (2, 5, NV) and got.dtype == jnp.float32
    assert_close(got, want, "float32", "logits")


# ---- the model -------------------------------------------------------------------------------------------------------
def test_model_has_no_embedding_or_head_and_tables_are_not_params(model):
    assert model.embed is None and model.head is None
    params = nnx.state(model, nnx.Param)
    flat = {param_path(path) for path, _ in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(params))}
    assert not any(p.startswith(("embed", "head")) for p in flat)
    assert {"pairs/in_proj/kernel", "pairs/out_proj/kernel"} <= flat
    assert sorted(p for p in flat if p.startswith("pairs/")) == ["pairs/in_proj/kernel", "pairs/out_proj/kernel"]
    # Nothing but Params in the whole state: the frozen tables are constants, not variables of the model.
    everything = nnx.state(model)
    assert len(jax.tree.leaves(everything)) == len(jax.tree.leaves(params))
    assert not any(x.shape in ((NK, D), (NV, D)) for x in jax.tree.leaves(everything))
    # count_params: the token model minus its (tied) embedding, plus W_in (2D x D) and W_out (D x D)
    tokens = create_model(CONFIG.replace(inputs="tokens"), seed=1)
    assert count_params(model) == count_params(tokens) - NV * D + 3 * D * D
    assert PureModel.split(model)[0].num_params(nnx.state(model)) == count_params(model)
    # tie_embeddings=False builds no head either
    assert create_model(CONFIG.replace(tie_embeddings=False)).head is None


def test_model_logits_use_the_pair_io(model):
    cfg = StackedMQARConfig(num_kv_pairs=4, num_keys=NK, num_values=NV)
    inputs = jnp.asarray(np.stack([StackedMQARSource(cfg, 2, seed=0)[i]["inputs"] for i in range(2)]))
    logits = model(inputs)
    assert logits.shape == (2, 8, NV) and logits.dtype == jnp.float32
    h, _ = model.hidden(inputs)
    assert_close(logits, np.asarray(model.pairs.logits(h)), "float32", "logits")
    assert np.all(np.isfinite(np.asarray(logits)))
    # causal: changing the last query leaves the earlier positions alone
    changed = inputs.at[:, -1].set(pair_codes(np.array([0]), np.array([-1]), NV)[0])
    assert_close(model(changed)[:, :-1], np.asarray(logits[:, :-1]), "float32", "causality")
    # the frozen tables come from the config: another table seed gives another function with the same params
    other = nnx.merge(nnx.graphdef(create_model(CONFIG.replace(table_seed=4), seed=1)), nnx.state(model))
    assert not np.allclose(np.asarray(other(inputs)), np.asarray(logits))


def test_out_of_range_codes_are_refused(model):
    vocab = CONFIG.input_vocab
    assert vocab == NK * (NV + 1)
    with pytest.raises(ValueError, match=rf"tokens holds id {vocab}, outside the vocabulary \[0, {vocab}\)"):
        model(jnp.asarray([[0, vocab]], jnp.int32))
    with pytest.raises(ValueError, match=r"tokens holds id -1, outside the vocabulary"):
        model(jnp.asarray([[-1, 0]], jnp.int32))
    model(jnp.asarray([[0, vocab - 1]], jnp.int32))  # the largest code is fine


def test_gradients_reach_the_projections(model):
    cfg = StackedMQARConfig(num_kv_pairs=4, num_keys=NK, num_values=NV)
    ex = StackedMQARSource(cfg, 1, seed=0)[0]
    inputs, labels = jnp.asarray(ex["inputs"][None]), jnp.asarray(ex["labels"][None])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(inputs)
        mask = labels >= 0
        lp = jax.nn.log_softmax(logits)
        picked = jnp.take_along_axis(lp, jnp.where(mask, labels, 0)[..., None], -1)[..., 0]
        return -jnp.sum(jnp.where(mask, picked, 0.0)) / mask.sum()

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value))
    assert abs(float(value) - np.log(NV)) < 0.5  # near chance at initialisation
    for name in ("in_proj", "out_proj"):
        g = np.asarray(grads["pairs"][name]["kernel"][...])
        assert g.shape == np.asarray(params["pairs"][name]["kernel"][...]).shape
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, name
    # and the out_proj gradient is the closed form h^T (softmax - onehot) V / #queries (h: the final hidden states)
    h = np.asarray(model.hidden(inputs)[0][0], np.float64)
    probs = np.asarray(jax.nn.softmax(model(inputs)[0]), np.float64)
    onehot = np.zeros_like(probs)
    mask = ex["labels"] >= 0
    onehot[mask, ex["labels"][mask]] = 1.0
    dlogits = (probs - onehot) * mask[:, None] / mask.sum()
    want = h.T @ dlogits @ _numpy_table(NV, D, 3, 1)
    scale = np.sqrt(np.mean(want**2))  # compare at O(1) scale (the gradient itself is small)
    assert scale > 0
    assert_close(np.asarray(grads["pairs"]["out_proj"]["kernel"][...]) / scale, want / scale, "float32",
                 "out_proj gradient")


def test_generation_is_refused_but_pairs_stream_through_prefill_and_decode(model):
    """A pair-table model predicts values, not its next input: ``generate`` refuses it; ``prefill`` + ``decode``
    stream pair codes and give the logits of the whole sequence at once."""
    from mc_jax.models import decode, generate, prefill

    pure, state = PureModel.split(model)
    ex = StackedMQARSource(StackedMQARConfig(num_kv_pairs=4, num_keys=NK, num_values=NV), 1, seed=0)[0]
    codes = jnp.asarray(ex["inputs"][None])
    with pytest.raises(ValueError, match="pair codes"):
        generate(pure, state, codes[:, :3], max_new_tokens=2)
    full = pure.apply(state, codes)
    cache = model.init_cache(1, codes.shape[1])
    head, cache = prefill(pure, state, codes[:, :5], cache, all_logits=True)
    steps = [head]
    for t in range(5, codes.shape[1]):
        logits, cache = decode(pure, state, codes[:, t], cache)
        steps.append(logits[:, None])
    assert_close(jnp.concatenate(steps, axis=1), full, "float32", "streamed pairs == parallel forward")
