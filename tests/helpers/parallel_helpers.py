"""Shared pieces of the scale-out tests: a tiny model that exercises every sharded parameter kind, fixed batches,
and a sharded / single-device training step runner (compiled once per mesh and reused across tests)."""

from __future__ import annotations

import functools

import jax
import numpy as np

from mc_jax.data import MQARSource  # noqa: E402
from mc_jax.models import create_model  # noqa: E402
from mc_jax.parallel import MeshConfig, make_mesh  # noqa: E402
from mc_jax.train.optim import make_optimizer  # noqa: E402
from mc_jax.train.sharding import TrainSharding  # noqa: E402
from mc_jax.train.step import make_train_step, reshape_for_accum, split_model  # noqa: E402
from tests.helpers.train_helpers import tiny_config  # noqa: E402

# MC (titans: learned W_0 split over heads) + attention, untied head, stacked layers: every rule of the table is used.
# AdamW's eps is raised to 1e-3 so that an update is a smooth function of its gradient: with eps=1e-8 the first
# updates are ~lr * sign(g), and float32 summation-order noise on near-zero gradients (any two XLA programs differ
# there, sharded or not) flips single elements by up to 2 lr, which no float32 tolerance can absorb. The sharding
# of the moments is exercised all the same.
TRAIN_OVERRIDES = ("train.batch_size=8", "train.warmup=0", "train.eps=1e-3", "train.steps=4", "train.ckpt_every=2",
                   "train.log_every=1")
OVERRIDES = (
    "model.num_heads=2", "model.num_layers=2", "model.pattern=mc,attention", "model.mixer.memory=titans",
    "model.tie_embeddings=false", "model.scan_layers=true", *TRAIN_OVERRIDES,
)
STEPS = 4
# The loop tests (each compiles its own programs, in several processes) use the plain tiny MC layer (linear + grm).
LOOP_OVERRIDES = ("model.num_heads=2", *TRAIN_OVERRIDES)


def parallel_config(*extra: str):
    return tiny_config(*OVERRIDES, *extra)


def loop_config(*extra: str):
    return tiny_config(*LOOP_OVERRIDES, *extra)


@functools.cache
def batches(n: int = STEPS) -> tuple:
    """``n`` fixed global batches ``[accum=1, 8, L]`` (host numpy)."""
    config = parallel_config()
    src = MQARSource(config.train.task.mqar_config(), 8 * n, seed=3)
    rows = [src[i] for i in range(8 * n)]
    return tuple(reshape_for_accum({k: np.stack([r[k] for r in rows[8 * i:8 * i + 8]]) for k in ("inputs", "labels")},
                                   1) for i in range(n))


@functools.cache
def setup(mesh_sizes: tuple[int, int, int] | None):
    """``(step, params, opt_state, shard)`` for a mesh ``(data, fsdp, tensor)`` or ``None`` (single device)."""
    config = parallel_config()
    tx = make_optimizer(config.train)
    if mesh_sizes is None:
        graphdef, params, rest = split_model(create_model(config.model, seed=0))
        return make_train_step(graphdef, rest, tx, 1), params, tx.init(params), None
    graphdef, params, rest = split_model(create_model(config.model, seed=0))
    shard = TrainSharding.create(make_mesh(MeshConfig(*mesh_sizes)), params, tx)
    # the single-device initial values, placed in their shards (sharded initialisation, init_state, is what the
    # training loop uses: test_scaleout_loop.py)
    params = jax.device_put(params, shard.params)
    opt_state = jax.device_put(tx.init(params), shard.opt_state)
    return make_train_step(graphdef, rest, tx, 1, shard=shard), params, opt_state, shard


def run_steps(mesh_sizes, params=None, opt_state=None, first: int = 0, last: int = STEPS):
    """Steps ``first+1 .. last`` on the fixed batches; returns ``(params, opt_state, metrics per step)``."""
    step, p0, o0, shard = setup(mesh_sizes)
    params = p0 if params is None else params
    opt_state = o0 if opt_state is None else opt_state
    metrics = []
    for batch in batches()[first:last]:
        if shard is not None:
            batch = shard.global_batch(batch)
        params, opt_state, m = step(params, opt_state, batch)
        metrics.append({k: float(v) for k, v in m.items()})
    return params, opt_state, metrics
