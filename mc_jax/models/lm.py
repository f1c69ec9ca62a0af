"""The decoder-only language model: embedding, a stack of pattern units, final RMSNorm, LM head.

With ``config.scan_layers`` the units' parameters are stacked on a leading axis (built with ``nnx.vmap``) and run
with a ``lax.scan`` over the split unit state, so the unit is traced and compiled once whatever the depth; decoding
caches are stacked the same way and scanned alongside. ``config.remat`` rematerialises each unit in the backward
pass (``jax.checkpoint``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mc_jax.config import ModelConfig
from mc_jax.layers.block import Unit
from mc_jax.layers.mlp import dense
from mc_jax.layers.norms import RMSNorm
from mc_jax.layers.pair_table import PairTableIO
from mc_jax.models.checks import check_tokens, in_vocab
from mc_jax.parallel.rules import constrain, path_string
from mc_jax.typing import Array, Float, Int

Cache = Any  # per unit: a tuple of mixer caches; stacked on a leading [units] axis when scanning


class LanguageModel(nnx.Module):
    """Causal LM over ``config``; see the module docstring. With ``config.inputs == "pair_table"`` the embedding and
    head are :class:`~mc_jax.layers.pair_table.PairTableIO` (stacked MQAR: pair codes in, value logits out).

    Call ``model(tokens)`` for float32 logits ``[B, T, V]``; ``model.forward(tokens, cache)`` to continue a
    decoding state from :meth:`init_cache` (returns ``(logits, cache)``).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype, pdtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        tokens = config.inputs == "tokens"
        self.embed = nnx.Embed(config.vocab_size, config.d_model, dtype=dtype, param_dtype=pdtype, rngs=rngs,
                               embedding_init=nnx.initializers.normal(config.init_std)) if tokens else None
        # stacked MQAR: pair codes in, value logits out, through frozen tables (mc_jax.layers.pair_table)
        self.pairs = None if tokens else PairTableIO(config, rngs=rngs)
        if config.scan_layers:
            @nnx.split_rngs(splits=config.num_units)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make(rngs: nnx.Rngs) -> Unit:
                return Unit(config, rngs=rngs)

            self.units = make(rngs)
        else:
            self.units = nnx.List([Unit(config, rngs=rngs) for _ in range(config.num_units)])
        self.norm = RMSNorm((config.d_model,), eps=config.norm_eps, dtype=dtype, param_dtype=pdtype)
        self.head = None if config.tie_embeddings or not tokens else dense(
            config.d_model, config.vocab_size, rngs=rngs, std=config.init_std, dtype=dtype, param_dtype=pdtype)

    # ---- pieces ------------------------------------------------------------------------------------------------
    def init_cache(self, batch: int, max_len: int) -> Cache:
        """Empty decoding state for ``batch`` rows and up to ``max_len`` tokens in total (all layers)."""
        if self.config.scan_layers:  # one cache per stacked unit, stacked the same way (pure jax.vmap, as in _stack)
            graphdef, state = nnx.split(self.units)
            return jax.vmap(lambda s: nnx.merge(graphdef, s).init_cache(batch, max_len))(state)
        return tuple(unit.init_cache(batch, max_len) for unit in self.units)

    def hidden(
        self, tokens: Int[Array, "b t"], cache: Cache | None = None, *, checked: bool = False
    ) -> tuple[Float[Array, "b t d"], Cache | None]:
        """Final-normed hidden states (and the updated cache when one is given).

        Out-of-range ids are refused when ``tokens`` is concrete; under ``jit`` their embedding is NaN (never another
        id's), and ``checked=True`` adds a ``checkify`` check (see :func:`~mc_jax.models.checks.check_tokens`).
        """
        check_tokens(tokens, self.config.input_vocab, checked=checked)
        ids, valid = in_vocab(tokens, self.config.input_vocab)
        x = self.embed(ids) if self.pairs is None else self.pairs.embed(ids)
        x = jnp.where(valid[..., None], x, jnp.nan)
        x = constrain(x, ("batch", "seq", None))  # a no-op without a mesh
        x, cache = self._stack(x, cache)
        return self.norm(x), cache

    def logits(self, h: Float[Array, "... d"]) -> Float[Array, "... v"]:
        """LM head (tied or not; the value table for ``pair_table`` inputs), float32 logits."""
        if self.pairs is not None:
            return self.pairs.logits(h)
        out = self.embed.attend(h) if self.head is None else self.head(h)
        return out.astype(jnp.float32)

    def _stack(self, x, cache):
        # Units run as pure functions of their split state (plain jax.lax.scan / jax.checkpoint rather than the
        # nnx transforms), so the model also works when a caller's jax transform closes over traced state (e.g. a
        # decoding loop in lax.scan). The forward pass mutates no variable, so nothing is written back.
        def call(graphdef, state, x, c):
            return nnx.merge(graphdef, state)(x, c)

        if self.config.remat:
            call = jax.checkpoint(call, static_argnums=(0,))
        if self.config.scan_layers:
            graphdef, state = nnx.split(self.units)
            return jax.lax.scan(lambda x, xs: call(graphdef, xs[0], x, xs[1]), x, (state, cache))
        new = []
        for i, unit in enumerate(self.units):
            x, c = call(*nnx.split(unit), x, None if cache is None else cache[i])
            new.append(c)
        return x, None if cache is None else tuple(new)

    # ---- entry points ------------------------------------------------------------------------------------------
    def __call__(self, tokens: Int[Array, "b t"], *, checked: bool = False) -> Float[Array, "b t v"]:
        return self.logits(self.hidden(tokens, checked=checked)[0])

    def forward(self, tokens: Int[Array, "b t"], cache: Cache, *, checked: bool = False
                ) -> tuple[Float[Array, "b t v"], Cache]:
        """Continue ``cache`` with ``tokens``: logits of every new token and the updated cache."""
        h, cache = self.hidden(tokens, cache, checked=checked)
        return self.logits(h), cache


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters (``nnx.Param`` leaves), also for an abstract model from ``nnx.eval_shape``."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def param_summary(model: nnx.Module, depth: int = 3) -> dict[str, int]:
    """Parameter counts grouped by the first ``depth`` parts of each path, e.g. ``units/blocks/0/mixer``."""
    out: dict[str, int] = {}
    for path, x in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)):
        name = "/".join(path_string(path).split("/")[:depth])  # the Variable's own `.value` entry dropped
        out[name] = out.get(name, 0) + math.prod(x.shape)
    return out


def create_model(config: ModelConfig, seed: int = 0) -> LanguageModel:
    """A freshly initialised language model for ``config`` (a :class:`~mc_jax.config.ModelConfig`).

    ``seed`` drives every initialiser. The result is a ``flax.nnx`` module: ``model(tokens)`` maps int32
    ``[B, T]`` tokens (or pair codes for ``inputs="pair_table"``) to float32 logits ``[B, T, vocab_size]``. For pure
    functions of the parameters (``jax.jit``, ``generate``) split it: ``pure, state = PureModel.split(model)``.
    """
    return LanguageModel(config, rngs=nnx.Rngs(seed))


def abstract_model(config: ModelConfig) -> LanguageModel:
    """The model with ``ShapeDtypeStruct`` leaves (no memory, no compute): for shapes and parameter counts."""
    return nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0)))
