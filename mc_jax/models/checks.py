"""Argument checks at the API boundary (jnp gathers clamp out-of-range ids silently, so check them here), and
:func:`all_finite` for parameter / state trees (also sharded over processes)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_tokens(tokens, vocab_size: int, *, name: str = "tokens", checked: bool = False) -> None:
    """``tokens`` must be an integer ``[B, T]`` array with ``T >= 1``; ids in ``[0, vocab_size)`` when concrete.

    Under a trace (``jit``) the values are unknown: only the shape and dtype are checked, and with ``checked`` a
    ``jax.experimental.checkify`` check of the id range is added (wrap the jitted function with
    ``checkify.checkify``). Unchecked, an out-of-range id under ``jit`` still never reads another token's
    embedding: the model gives NaN for it (:meth:`~mc_jax.models.LanguageModel.hidden`).
    """
    shape = jnp.shape(tokens)
    if len(shape) != 2:
        raise ValueError(f"{name} must be a [batch, length] array of token ids; got shape {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"{name} is empty (shape {shape}); pass at least one token per row")
    dtype = jnp.result_type(tokens)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer token ids; got dtype {dtype}")
    if is_concrete(tokens):
        values = np.asarray(tokens)
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} holds id {bad}, outside the vocabulary [0, {vocab_size})")
    elif checked:
        checkify.check(jnp.all((tokens >= 0) & (tokens < vocab_size)),
                       f"{name} holds ids outside the vocabulary [0, {vocab_size})")


def in_vocab(tokens, vocab_size: int):
    """``(ids, valid)``: ``tokens`` with out-of-range ids replaced by 0, and where the ids were in range (jnp gathers
    would clamp or wrap them: -1 would read id ``vocab_size - 1``)."""
    valid = (tokens >= 0) & (tokens < vocab_size)
    return jnp.where(valid, tokens, 0), valid


def all_finite(tree: Any) -> bool:
    """Whether every floating leaf is finite; also for arrays spread over processes."""
    leaves = [x for x in jax.tree.leaves(tree) if np.issubdtype(np.dtype(x.dtype), np.floating)]
    if not leaves:
        return True
    if all(getattr(x, "is_fully_addressable", True) for x in leaves):
        return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in leaves)
    check = jax.jit(lambda xs: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])))
    return bool(check(leaves))
