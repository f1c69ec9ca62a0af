"""The jit-compiled step, the optimizer (schedule, weight-decay mask, clipping) and gradient accumulation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mc_jax.data import IGNORE_INDEX, MQARSource
from mc_jax.models import abstract_model, create_model
from mc_jax.train.optim import decay_mask, make_optimizer, make_schedule, param_path
from mc_jax.train.step import make_train_step, reshape_for_accum, split_model
from tests.helpers.tolerances import assert_allclose
from tests.helpers.train_helpers import tiny_config


def _batch(config, n, seed=3):
    src = MQARSource(config.train.task.mqar_config(), n, seed=seed)
    rows = [src[i] for i in range(n)]
    return {k: np.stack([r[k] for r in rows]) for k in ("inputs", "labels")}


def _setup(config):
    graphdef, params, rest = split_model(create_model(config.model, seed=0))
    tx = make_optimizer(config.train)
    return graphdef, params, rest, tx, tx.init(params)


def test_one_step_decreases_loss_on_a_fixed_batch():
    config = tiny_config("train.warmup=0", "train.lr=3e-3")
    graphdef, params, rest, tx, opt = _setup(config)
    step = make_train_step(graphdef, rest, tx, accum=1)
    batch = reshape_for_accum(_batch(config, 4), 1)
    losses = []
    for _ in range(4):
        params, opt, m = step(params, opt, batch)
        losses.append(float(m["loss"]))
    assert all(np.isfinite(losses))
    assert losses[1] < losses[0] and losses[-1] < losses[0] - 0.05, losses


def test_grad_accumulation_equals_the_big_batch():
    """The accumulated update equals the big batch's. Plain SGD (lr 1), so the new parameters are ``p - g`` and the
    comparison is of the gradients: Adam's first step ``lr g / (|g| + eps)`` turns float32 summation-order noise in a
    near-zero gradient into an O(lr) difference (one element in 512 differed by 2.9e-5 relative with Adam)."""
    config = tiny_config("train.batch_size=8", "train.warmup=0")
    graphdef, params, rest, _, _ = _setup(config)
    tx = optax.sgd(1.0)
    opt = tx.init(params)
    batch = _batch(config, 8)
    batch["labels"][0, :] = IGNORE_INDEX  # uneven label counts per micro-batch: the mean must be over the whole batch
    p1, _, m1 = make_train_step(graphdef, rest, tx, accum=1)(params, opt, reshape_for_accum(batch, 1))
    p4, _, m4 = make_train_step(graphdef, rest, tx, accum=4)(params, opt, reshape_for_accum(batch, 4))
    assert_allclose(float(m4["loss"]), float(m1["loss"]), "float32_tight")
    assert_allclose(float(m4["grad_norm"]), float(m1["grad_norm"]), "float32_relative")
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4), strict=True):
        assert_allclose(np.asarray(a), np.asarray(b), "grad_accumulation")


def test_weight_decay_mask_skips_norms_biases_and_initial_memories():
    config = tiny_config("model.mixer.memory=titans", "model.scan_layers=true")
    _, params, _ = split_model(abstract_model(config.model))  # shapes only: no initialisation cost
    mask = decay_mask(params)
    flat = {param_path(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
    no_decay = sorted(k for k, v in flat.items() if not v)
    decay = sorted(k for k, v in flat.items() if v)
    assert "embed/embedding" in decay
    assert any(k.endswith("mixer/q_proj/kernel") for k in decay)
    assert any(k.endswith("mlp/up/kernel") for k in decay)
    for name in ("mixer/W1", "mixer/W2", "gates/proj/bias", "mixer_norm/scale", "out_norm/scale"):
        assert any(k.endswith(name) for k in no_decay), name
    assert "norm/scale" in no_decay
    assert all(k.rsplit("/", 1)[-1] in ("scale", "bias", "W1", "W2") for k in no_decay)


def _toy_params():
    rng = np.random.default_rng(0)
    leaf = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    return {"embed": {"embedding": leaf(8, 4)}, "norm": {"scale": leaf(4)},
            "mixer": {"W1": leaf(2, 4, 8), "W2": leaf(2, 8, 4), "q_proj": {"kernel": leaf(4, 4)},
                      "gates": {"proj": {"bias": leaf(2), "kernel": leaf(4, 2)}}}}


def test_weight_decay_applies_only_where_the_mask_says():
    config = tiny_config("train.warmup=0", "train.weight_decay=0.5", "train.clip=0")
    params = _toy_params()
    tx = make_optimizer(config.train)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)  # zero gradient: the update is the decay alone
    lr = float(make_schedule(config.train)(0))
    for (path, u), p in zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(params), strict=True):
        name = param_path(path).rsplit("/", 1)[-1]
        if name in ("scale", "bias", "W1", "W2"):
            assert np.all(np.asarray(u) == 0), param_path(path)
        else:
            assert_allclose(np.asarray(u), -lr * 0.5 * np.asarray(p), "optimizer_update")


def test_schedule_warmup_then_cosine():
    config = tiny_config("train.steps=100", "train.warmup=10", "train.lr=1e-2", "train.min_lr_ratio=0.1")
    s = make_schedule(config.train)
    values = np.array([float(s(i)) for i in range(101)])
    assert values[0] == 0.0
    assert_allclose(values[5], 5e-3, "float32_tight")
    assert_allclose(values[10], 1e-2, "float32_tight")
    assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) <= 1e-12)
    assert_allclose(values[100], 1e-3, "float32_relative")
    assert_allclose(values[55], 1e-3 + 0.5 * (1e-2 - 1e-3), "float32_relative")  # cosine midpoint


def test_clipping_happens_before_adamw():
    config = tiny_config("train.warmup=0", "train.clip=1e-3", "train.weight_decay=0")
    params = _toy_params()
    grads = jax.tree.map(lambda p: 10.0 * p, params)
    tx = make_optimizer(config.train)
    got, _ = tx.update(grads, tx.init(params), params)
    clipped, _ = optax.clip_by_global_norm(1e-3).update(grads, optax.EmptyState())
    assert float(optax.tree.norm(clipped)) == pytest.approx(1e-3, rel=1e-5)
    plain = optax.adamw(make_schedule(config.train), b1=config.train.b1, b2=config.train.b2, eps=config.train.eps,
                        weight_decay=0.0)
    want, _ = plain.update(clipped, plain.init(params), params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_allclose(np.asarray(a), np.asarray(b), "float32_tight")
