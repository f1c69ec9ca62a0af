"""Evaluations of a finished job beyond the run's own held-out accuracy, and post-training Memory Caching.

Post-training MC (paper section 4.3): the parameters of a model trained without caching (mixer ``none``) are
loaded into the same model with caching (mixer ``mc``, ``router_init=zeros``): every parameter is the trained one;
the only new one, the router ``W_u``, is zero, so every token averages its available memories uniformly (the paper's
proposal of MC with no new parameters).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mc_jax.data import IGNORE_INDEX


def _loaded(rdir: Path):
    from mc_jax.eval.load import load_checkpoint

    return load_checkpoint(rdir)


def extra(job, rdir: Path, config) -> dict[str, Any]:
    """What ``job.evaluate`` asks for beyond the run's final evaluation."""
    if job.evaluate == "final":
        return {}
    run = _loaded(rdir)
    if job.evaluate == "stacked":
        return stacked(run.pure, run.state, config)
    if job.evaluate == "niah":
        return niah(run.pure, run.state, config, job.options())
    if job.evaluate == "lm":
        return language_model(run.pure, run.state, config, job.options())
    raise ValueError(f"unknown evaluation {job.evaluate!r}")


def stacked(pure, state, config) -> dict[str, Any]:
    """Accuracy by the segment (of the MC model; 8 positions for the others) holding the queried pair."""
    from mc_jax.eval.metrics import stacked_mqar_accuracy

    task, mixer = config.train.task, config.model.mixer
    out = stacked_mqar_accuracy(pure, state, task.stacked_mqar_config(), num_examples=task.eval_examples,
                                seed=task.eval_seed, bucket=mixer.segment_size)
    return {"by_segment": [b["accuracy"] for b in out["by_position"]], "segment_size": mixer.segment_size}


def niah(pure, state, config, options: dict[str, Any]) -> dict[str, Any]:
    """Exact match on a depth x length grid (lengths as multiples of the training length)."""
    from mc_jax.eval.metrics import niah_grid

    task = config.train.task
    lengths = [int(task.seq_len * f) for f in options.get("length_factors", (1, 2, 4, 8))]
    depths = list(options.get("depths", (0.0, 0.25, 0.5, 0.75, 1.0)))
    grid = niah_grid(pure, state, task.niah_config(), lengths, depths, samples=int(options.get("samples", 32)))
    return {"niah": {"lengths": grid["lengths"], "depths": grid["depths"], "exact": grid["exact"].tolist(),
                     "char_accuracy": grid["char_accuracy"].tolist()},
            "accuracy": float(np.nanmean(grid["exact"]))}


def language_model(pure, state, config, options: dict[str, Any]) -> dict[str, Any]:
    """Validation bits per byte and mean loss (nats) per position bucket over the held-out windows."""
    from mc_jax.train.data import build_task_data

    data = build_task_data(config)
    bucket = int(options.get("bucket", 32))
    apply = jax.jit(pure.apply)
    total, count = None, None
    for batch in data.eval_batches:
        logits = apply(state, jnp.asarray(batch["inputs"]))
        labels = np.asarray(batch["labels"])
        ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, np.where(labels == IGNORE_INDEX, 0,
                                                                                          labels)))
        mask = labels != IGNORE_INDEX
        s, c = np.where(mask, ce, 0.0).sum(0), mask.sum(0)
        total, count = (s, c) if total is None else (total + s, count + c)
    per_pos = total / np.maximum(count, 1)
    buckets = [float(per_pos[i:i + bucket].sum() / max(1, (count[i:i + bucket] > 0).sum()))
               for i in range(0, len(per_pos), bucket)]
    loss = float(total.sum() / max(1, count.sum()))
    return {"loss": loss, "bits_per_byte": loss / math.log(2), "loss_by_position": buckets, "bucket": bucket}


def transplant(source_params: dict, target_params: dict, allowed_new: tuple[str, ...] = ("u_proj",)) -> dict:
    """``target_params`` with every leaf present in ``source_params`` (same path) replaced by the source's.

    Leaves only the target has must sit under one of ``allowed_new`` (the router); a shape mismatch or any other
    missing leaf is an error: the two models must differ only in their caching settings.
    """
    src = dict(jax.tree_util.tree_leaves_with_path(source_params))
    src = {jax.tree_util.keystr(p): x for p, x in src.items()}

    def pick(path, leaf):
        key = jax.tree_util.keystr(path)
        if key in src:
            if np.shape(src[key]) != np.shape(leaf):
                raise ValueError(f"parameter {key}: shape {np.shape(src[key])} in the checkpoint, "
                                 f"{np.shape(leaf)} in the new model")
            return jnp.asarray(src[key], leaf.dtype)
        if not any(name in key for name in allowed_new):
            raise ValueError(f"parameter {key} of the new model is not in the checkpoint; post-training caching "
                             "may only add the router")
        return leaf

    return jax.tree_util.tree_map_with_path(pick, target_params)


def post_training(source_run: Path, job, config) -> dict[str, Any]:
    """Load the checkpoint of the run ``source_run`` (job ``job.source``) into ``config.model`` (MC, zero router)
    and run the NIAH grid."""
    from mc_jax.models import create_model
    from mc_jax.models.pure import PureModel
    from mc_jax.train.step import merge_model, split_model

    if config.model.mixer.router_init != "zeros":
        raise ValueError("post-training MC needs model.mixer.router_init=zeros (a uniform average at the start)")
    source = _loaded(source_run)
    graphdef, params, rest = split_model(create_model(config.model, config.train.seed))
    model = merge_model(graphdef, transplant(source.params, params), rest)
    pure, state = PureModel.split(model)
    result = niah(pure, state, config, job.options())
    result["source"] = job.source
    return result


__all__ = ["extra", "language_model", "niah", "post_training", "stacked", "transplant"]
