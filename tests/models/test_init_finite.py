"""Every memory x {caching, none} on every shipped preset gives finite logits and gradients at initialisation.

Regression test of issue 16 item 1: on the default preset (stacked MQAR, d_model 32, init_std 0.1) the uncached
Titans layer (one 64-token segment) was non-finite at step 1 with the learning rate still 0. Cause: the Titans
gates started at an inner learning rate theta = 0.12 with momentum eta = 0.88, an effective step
theta / (1 - eta) = 1.0 on ``|M(k) - v|^2``, above the inner optimiser's stability limit, so the memory's weights
grew geometrically along any run of tokens longer than a few chunks (the naive per-token recurrence diverged too;
with segments of 16 = one inner chunk the cached layer restarted in time). See ``mc_jax/layers/gates.py``.

Each case is the preset with its memory swapped, run on the preset's own task (text of the shipped corpus for the
bare model presets, with two segments per sequence) for one batch. Big presets are reduced without changing what
the mixer sees at initialisation: d_model is cut to 64 with ``init_std`` scaled by ``sqrt(d_model / 64)``, so every
projection's output (q, k, v, u, the gate logits) has the preset's distribution (inputs are RMS-normalised); the
head dims, dtype and mixer settings are the preset's; heads, layers, the MLP width and the vocabulary are cut.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mc_jax.config import ModelConfig
from mc_jax.configs_util import load_preset
from mc_jax.models import create_model
from mc_jax.ops import MEMORIES
from mc_jax.train.config import RunConfig, TaskConfig, TrainConfig
from mc_jax.train.data import build_task_data
from mc_jax.train.step import _loss, split_model

PRESETS = ("train_tiny_mqar", "train_token_mqar", "tiny", "small", "paper_760m", "paper_1_3b")
# 16 rows of the recall presets' batches: the divergence this guards against (an inner step above the stability
# limit) made every sequence non-finite, and the suite's time is better spent on the presets x memories grid. One
# layer: every layer's mixer sees RMS-normalised inputs, and compiling a second one was a third of each case's time.
MAX_LAYERS, MAX_ROWS, SMALL_D, SMALL_VOCAB, SMALL_MLP = 1, 16, 64, 256, 64


def _mixer_for(mixer, memory: str, kind: str):
    changes = {"memory": memory, "kind": kind, "gates": None}
    if MEMORIES[memory].family.deep and mixer.chunk_size is not None and mixer.segment_size % mixer.chunk_size:
        changes["chunk_size"] = None
    if kind == "none" and mixer.aggregation == "ssc":
        changes.update(aggregation="residual", top_k=None)
    return dataclasses.replace(mixer, **changes)


def reduced_run(preset: str, memory: str, kind: str) -> RunConfig:
    """The preset with ``memory`` and mixer ``kind``, shrunk as the module docstring says."""
    base = load_preset(preset)
    if isinstance(base, ModelConfig):  # a bare model: the shipped byte corpus, two segments per sequence
        seq = max(64, 2 * base.mixer.segment_size)
        task = TaskConfig(kind="text", seq_len=seq)
        train = TrainConfig(batch_size=2, warmup=0, steps=1, task=task)
        model = base
    else:
        model, train = base.model, base.train
        train = dataclasses.replace(train, batch_size=min(train.batch_size, MAX_ROWS), warmup=0, accum=1)
    changes: dict = {"mixer": _mixer_for(model.mixer, memory, kind), "num_layers": min(model.num_layers, MAX_LAYERS),
                         "scan_layers": False, "remat": False}
    if model.d_model > SMALL_D:  # one head of the preset's head dims over a narrower stream, same statistics
        changes.update(d_model=SMALL_D, num_heads=1, init_std=model.init_std * (model.d_model / SMALL_D) ** 0.5,
                       mixer=dataclasses.replace(changes["mixer"], key_dim=model.key_dim, value_dim=model.value_dim))
    if model.inputs == "tokens":
        changes.update(vocab_size=SMALL_VOCAB, mlp_hidden=SMALL_MLP if model.hidden_dim > SMALL_MLP else None)
    return RunConfig(model=model.replace(**changes), train=train)


# Linear-family memories have no inner optimiser that can diverge at initialisation (their states are sums of
# bounded outer products of unit keys); they are covered on the recall presets and `small`, the deep memories on all.
LINEAR_PRESETS = ("train_tiny_mqar", "train_token_mqar", "small")


def _cases():
    for preset in PRESETS:
        for memory in MEMORIES:
            if not MEMORIES[memory].family.deep and preset not in LINEAR_PRESETS:
                continue
            for kind in ("mc", "none"):
                yield pytest.param(preset, memory, kind, id=f"{preset}-{memory}-{kind}")


@pytest.mark.slow
@pytest.mark.parametrize("preset,memory,kind", list(_cases()))
def test_finite_at_init(preset, memory, kind):
    run = reduced_run(preset, memory, kind)
    batch = next(iter(build_task_data(run).iterator()))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    graphdef, params, rest = split_model(create_model(run.model, run.train.seed))
    grad_fn = jax.jit(jax.value_and_grad(_loss, has_aux=True), static_argnums=1)
    (loss, _), grads = grad_fn(params, graphdef, rest, batch)
    assert np.isfinite(float(loss)), f"{preset} / {memory} / {kind}: loss {float(loss)} at initialisation"
    bad = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads)
           if not np.all(np.isfinite(np.asarray(g, np.float32)))]
    assert not bad, f"{preset} / {memory} / {kind}: non-finite gradients at initialisation in {bad}"

