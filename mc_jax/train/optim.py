"""The optimizer: AdamW with a warm-up + cosine schedule, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

from typing import Any

import jax
import optax

from mc_jax.parallel.rules import path_string
from mc_jax.train.config import TrainConfig

# Parameter names that are never decayed: norm scales, biases, and the learned initial memories of deep memories
# (``W1``/``W2`` of an MC mixer are the outer-loop initial state W_0, not projection weights).
NO_DECAY_NAMES = frozenset({"scale", "bias", "W1", "W2"})


param_path = path_string  # ``units/blocks/0/mixer/q_proj/kernel`` for a pytree key path (one home: parallel.rules)


def decays(path: tuple) -> bool:
    """Whether the parameter at ``path`` gets weight decay (matrices and embeddings do)."""
    names = param_path(path).split("/")
    return not any(n in NO_DECAY_NAMES for n in names[-1:])


def decay_mask(params: Any) -> Any:
    """A pytree of bools shaped like ``params``: ``True`` where weight decay applies."""
    return jax.tree_util.tree_map_with_path(lambda path, _: decays(path), params)


def make_schedule(config: TrainConfig) -> optax.Schedule:
    """0 -> ``lr`` linearly over ``warmup`` steps, then cosine to ``lr * min_lr_ratio`` at ``steps``.

    The value at optimizer count ``c`` is the learning rate of update ``c + 1`` (counts start at 0).
    """
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.lr, warmup_steps=config.warmup, decay_steps=config.steps,
        end_value=config.lr * config.min_lr_ratio,
    )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Clip (global norm) then AdamW with decoupled, masked weight decay."""
    adamw = optax.adamw(make_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps,
                        weight_decay=config.weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(config.clip), adamw) if config.clip > 0 else adamw


__all__ = ["NO_DECAY_NAMES", "decay_mask", "decays", "make_optimizer", "make_schedule", "param_path"]
