"""Loss, the jit-compiled training step (with gradient accumulation) and the evaluation step.

The loss is the mean next-token cross-entropy over the labelled positions of the **whole** batch (labels equal to
``IGNORE_INDEX`` carry no target). With ``accum`` micro-batches the step sums the per-micro-batch gradients of the
summed loss and divides by the total number of labelled tokens once, so the update equals the one computed on the
whole batch (up to float summation order).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from mc_jax.models import LanguageModel
from mc_jax.models.loss import token_stats
from mc_jax.train.sharding import TrainSharding

Batch = dict[str, Any]  # {"inputs": int32[B, L], "labels": int32[B, L]}


def split_model(model: LanguageModel) -> tuple[nnx.GraphDef, dict, Any]:
    """``(graphdef, params, rest)``: params as a plain nested dict (what the optimizer and checkpoints hold)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), rest


def merge_model(graphdef: nnx.GraphDef, params: dict, rest: Any) -> LanguageModel:
    return nnx.merge(graphdef, nnx.State(params), rest)


def _loss(params, graphdef, rest, batch):
    logits = merge_model(graphdef, params, rest)(batch["inputs"])
    stats = token_stats(logits, batch["labels"])
    return stats["loss_sum"], stats


def reshape_for_accum(batch: Batch, accum: int) -> Batch:
    """``[B, L] -> [accum, B / accum, L]`` (micro-batch ``i`` is rows ``i*B/accum ...``)."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.shape[0] % accum:
            raise ValueError(f"batch of {value.shape[0]} rows does not split into {accum} micro-batches")
        out[key] = value.reshape((accum, value.shape[0] // accum) + value.shape[1:])
    return out


def make_train_step(graphdef: nnx.GraphDef, rest: Any, tx: optax.GradientTransformation, accum: int, *,
                    shard: TrainSharding | None = None, donate: bool = False) -> Callable:
    """``step(params, opt_state, batch) -> (params, opt_state, metrics)``, jit-compiled once.

    ``batch`` leaves have shape ``[accum, micro_batch, L]`` (see :func:`reshape_for_accum`). ``metrics`` holds the
    batch ``loss`` (before the update), ``grad_norm`` (before clipping), labelled-token ``accuracy`` and ``tokens``
    (labelled).

    With ``shard`` (:class:`~mc_jax.train.sharding.TrainSharding`) the step is compiled for its mesh (pjit
    semantics): parameters and optimizer state keep their shardings in and out, the batch is split over
    ``(data, fsdp)``, metrics are replicated, and the model traces under ``jax.set_mesh`` so that its activation
    constraints and the per-shard MC op apply. ``donate`` reuses the old parameter / optimizer buffers.
    """
    grad_fn = jax.value_and_grad(_loss, has_aux=True)

    def step(params, opt_state, batch):
        if accum == 1:
            (_, stats), grads = grad_fn(params, graphdef, rest, jax.tree.map(lambda x: x[0], batch))
        else:
            def micro(carry, mb):
                g_acc, s_acc = carry
                (_, stats), g = grad_fn(params, graphdef, rest, mb)
                keep = ("loss_sum", "count", "correct")
                return (jax.tree.map(jnp.add, g_acc, g), {k: s_acc[k] + stats[k] for k in keep}), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            init = (zeros, {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "count", "correct")})
            (grads, stats), _ = jax.lax.scan(micro, init, batch)
        count = jnp.maximum(stats["count"], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        metrics = {
            "loss": stats["loss_sum"] / count,
            "accuracy": stats["correct"] / count,
            "tokens": stats["count"],
            "grad_norm": optax.tree.norm(grads),
        }
        return new_params, new_opt, metrics

    donate_argnums = (0, 1) if donate else ()
    if shard is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    jitted = jax.jit(step, in_shardings=(shard.params, shard.opt_state, shard.batch(3, 1)),
                     out_shardings=(shard.params, shard.opt_state, shard.replicated), donate_argnums=donate_argnums)

    def sharded_step(params, opt_state, batch):
        with jax.set_mesh(shard.mesh):
            return jitted(params, opt_state, batch)

    sharded_step.jitted = jitted  # for lowering / inspection
    return sharded_step


@partial(jax.jit, static_argnums=(0,))
def _eval_stats(graphdef, params, rest, inputs, labels):
    logits = merge_model(graphdef, params, rest)(inputs)
    return token_stats(logits, labels)


def evaluate_batches(graphdef: nnx.GraphDef, params: dict, rest: Any, batches: list[Batch], *,
                     shard: TrainSharding | None = None) -> dict[str, float]:
    """Held-out metrics over ``batches``: mean ``loss`` per labelled token, ``perplexity``, token ``accuracy`` and
    ``exact_match`` (fraction of rows whose labelled tokens are all right; rows without labels are skipped).

    With ``shard`` the batches (the same on every process) go onto its mesh replicated and the model runs under it.
    """
    tot = {"loss_sum": 0.0, "count": 0.0, "correct": 0.0, "exact": 0.0, "rows": 0.0}
    for batch in batches:
        if shard is None:
            s = _eval_stats(graphdef, params, rest, jnp.asarray(batch["inputs"]), jnp.asarray(batch["labels"]))
        else:
            inputs, labels = shard.put_replicated((batch["inputs"], batch["labels"]))
            with jax.set_mesh(shard.mesh):
                s = _eval_stats(graphdef, params, rest, inputs, labels)
            s = multihost_utils.process_allgather(s, tiled=True)  # every process reads the whole result
        s = jax.device_get(s)
        tot["loss_sum"] += float(s["loss_sum"])
        tot["count"] += float(s["count"])
        tot["correct"] += float(s["correct"])
        tot["exact"] += float(np.sum(s["row_exact"]))
        tot["rows"] += float(np.sum(s["row_has_label"]))
    count = max(tot["count"], 1.0)
    loss = tot["loss_sum"] / count
    return {
        "loss": loss,
        "perplexity": float(np.exp(min(loss, 80.0))),
        "accuracy": tot["correct"] / count,
        "exact_match": tot["exact"] / max(tot["rows"], 1.0),
        "tokens": tot["count"],
    }


__all__ = ["evaluate_batches", "make_train_step", "merge_model", "reshape_for_accum", "split_model", "token_stats"]
