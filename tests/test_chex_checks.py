"""chex-checked properties across the stack: the training step and the decode step compile once
(``chex.assert_max_traces``), the public pure functions give the same numbers with and without ``jit``
(``chex.variants``), resumption restores parameter and optimizer pytrees exactly (``chex.assert_trees_all_equal``),
and output shapes / dtypes (``chex.assert_shape`` / ``assert_type``). Tolerances come from ``tolerances.py``."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mc_jax import PureModel, create_model, mean_loss, token_stats
from mc_jax.models import decode, prefill, sample_token
from mc_jax.ops import memory_caching
from mc_jax.train import Checkpointer, make_optimizer, split_model, train
from tests.helpers.tolerances import TOLERANCES
from tests.helpers.train_helpers import tiny_config

generate_mod = importlib.import_module("mc_jax.models.generate")  # (the package re-exports a function of that name)
step_mod = importlib.import_module("mc_jax.train.step")


# ---- compile once ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("accum", [1, 2])
def test_the_training_step_compiles_once(tmp_path, monkeypatch, accum):
    chex.clear_trace_counter()
    monkeypatch.setattr(step_mod, "_loss", chex.assert_max_traces(step_mod._loss, n=1))
    result = train(tiny_config("train.steps=5", f"train.accum={accum}", "train.ckpt_every=2"), tmp_path / "run",
                   progress=False)
    assert len(result.losses) == 5  # five updates (and checkpoints, a data-iterator state) through one trace


def test_the_decode_step_compiles_once(monkeypatch):
    config = tiny_config("model.vocab_size=32", "model.num_layers=2").model
    pure, state = PureModel.split(create_model(config, seed=0))
    chex.clear_trace_counter()
    counted = jax.jit(chex.assert_max_traces(generate_mod._decode.__wrapped__, n=1), static_argnums=0)
    monkeypatch.setattr(generate_mod, "_decode", counted)
    cache = pure.init_cache(state, 2, 24)
    logits, cache = prefill(pure, state, jnp.ones((2, 5), jnp.int32), cache)
    for _ in range(8):  # every position, one compiled program
        token = jnp.argmax(logits, -1).astype(jnp.int32)
        logits, cache = decode(pure, state, token, cache)
        chex.assert_shape(logits, (2, config.vocab_size))
        chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)


# ---- exact resumption as pytrees -------------------------------------------------------------------------------------
def _restore(run_dir: Path, config, step: int):
    model = create_model(config.model, seed=0)
    _, params, _ = split_model(model)
    opt_state = make_optimizer(config.train).init(params)
    ckpt = Checkpointer(run_dir, read_only=True)
    try:
        params, opt_state, _ = ckpt.restore(step, params, opt_state)
    finally:
        ckpt.close()
    return params, opt_state


def test_a_resumed_run_restores_parameters_and_adam_state_exactly(tmp_path):
    config = tiny_config("train.steps=4", "train.ckpt_every=2")
    train(config, tmp_path / "straight", progress=False)
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")  # as if killed after the step-2 checkpoint
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "4")
    (tmp_path / "resumed" / "final.json").unlink()
    train(config, tmp_path / "resumed", resume=True, progress=False)
    straight, resumed = _restore(tmp_path / "straight", config, 4), _restore(tmp_path / "resumed", config, 4)
    chex.assert_trees_all_equal_structs(straight, resumed)
    chex.assert_trees_all_equal(straight, resumed)  # bit for bit: parameters, both Adam moments, the count
    at_two = _restore(tmp_path / "straight", config, 2)
    with pytest.raises(AssertionError):
        chex.assert_trees_all_equal(at_two[0], straight[0])  # the check can fail: training moved the parameters


# ---- with and without jit --------------------------------------------------------------------------------------------
class PureFunctionsUnderJit(chex.TestCase):
    """The public pure functions are the same function under ``jax.jit`` as eagerly."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_memory_caching_matches_the_per_token_definition(self):
        with jax.enable_x64(True):
            keys = jax.random.split(jax.random.key(0), 5)
            unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
            shape = (2, 24, 2, 8)
            q, k = (unit(jax.random.normal(key, shape, jnp.float64)) for key in keys[:2])
            v, u = (jax.random.normal(key, shape, jnp.float64) for key in keys[2:4])
            beta = jax.nn.sigmoid(jax.random.normal(keys[4], shape[:3], jnp.float64))

            def op(q, k, v, u, beta, impl="xla"):
                return memory_caching(q, k, v, u=u, memory="delta", aggregation="grm", segment_size=8,
                                      gates={"beta": beta}, impl=impl)

            y = self.variant(op)(q, k, v, u, beta)
            chex.assert_shape(y, shape)
            chex.assert_type(y, jnp.float64)
            chex.assert_trees_all_close(y, op(q, k, v, u, beta, impl="naive"), **TOLERANCES["float64"])

    @chex.variants(with_jit=True, without_jit=True)
    def test_mean_loss_and_token_stats(self):
        logits = jax.random.normal(jax.random.key(1), (3, 5, 11))
        labels = jnp.array([[1, 2, -100, 4, 5], [-100] * 5, [0, 10, 3, 3, -100]], jnp.int32)
        loss = self.variant(mean_loss)(logits, labels)
        stats = self.variant(token_stats)(logits, labels)
        chex.assert_shape(loss, ())
        chex.assert_type([loss, stats["count"]], [jnp.float32, jnp.float32])
        chex.assert_shape([stats["row_exact"], stats["row_has_label"]], [(3,), (3,)])
        x = np.asarray(logits, np.float64)  # the reference in float64 numpy
        logp = x - x.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        mask = np.asarray(labels) != -100
        picked = np.take_along_axis(logp, np.where(mask, labels, 0)[..., None], -1)[..., 0]
        expected = -(picked * mask).sum() / mask.sum()
        chex.assert_trees_all_close(loss, np.float32(expected), **TOLERANCES["float32"])
        chex.assert_trees_all_equal(stats["row_has_label"], jnp.array([True, False, True]))

    @chex.variants(with_jit=True, without_jit=True)
    def test_greedy_sampling_is_the_argmax(self):
        logits = jax.random.normal(jax.random.key(2), (4, 9))
        token = self.variant(lambda x: sample_token(x, jax.random.key(0), temperature=0.0, top_p=1.0))(logits)
        chex.assert_type(token, jnp.int32)
        chex.assert_trees_all_equal(token, jnp.argmax(logits, -1).astype(jnp.int32))
