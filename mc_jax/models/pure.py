"""A pure-function view of the model, for notebooks, ``jax.jit``/``lax.scan`` bodies and sharding.

``nnx.split`` turns a model into a static ``graphdef`` and a pytree ``state`` of arrays; every function here takes the
state explicitly and rebuilds the module inside the call (``nnx.merge``), so nothing is mutated and the functions
compose with any JAX transform (a Flax module may not be closed over by ``jax.lax.scan``; a merged one may)::

    pure, state = PureModel.create(config, seed=0)
    logits = jax.jit(pure.apply)(state, tokens)           # or apply(pure.graphdef, state, tokens)
"""

from __future__ import annotations

from dataclasses import dataclass

from flax import nnx

from mc_jax.config import ModelConfig
from mc_jax.models.lm import Cache, LanguageModel, count_params
from mc_jax.typing import Array, Float, Int, PyTree


def apply(graphdef: nnx.GraphDef, state: PyTree, tokens: Int[Array, "b t"], *, checked: bool = False
          ) -> Float[Array, "b t v"]:
    """Logits ``[B, T, V]`` (float32) of the model ``(graphdef, state)``; ``checked``: checkify the token ids under
    ``jit`` (``err, y = checkify.checkify(jax.jit(partial(apply, checked=True), static_argnums=0))(...)``)."""
    return nnx.merge(graphdef, state)(tokens, checked=checked)


@dataclass(frozen=True)
class PureModel:
    """The static half of a split model; methods are pure functions of the ``state`` half (hashable, so
    ``jax.jit(pure.apply)`` and ``static_argnums`` both work)."""

    graphdef: nnx.GraphDef
    config: ModelConfig

    @staticmethod
    def split(model: LanguageModel) -> tuple[PureModel, PyTree]:
        graphdef, state = nnx.split(model)
        return PureModel(graphdef, model.config), state

    @staticmethod
    def create(config: ModelConfig, seed: int = 0) -> tuple[PureModel, PyTree]:
        return PureModel.split(LanguageModel(config, rngs=nnx.Rngs(seed)))

    def merge(self, state: PyTree) -> LanguageModel:
        return nnx.merge(self.graphdef, state)

    def apply(self, state: PyTree, tokens: Int[Array, "b t"], *, checked: bool = False) -> Float[Array, "b t v"]:
        """Logits ``[B, T, V]`` (``checked``: see :func:`apply`)."""
        return apply(self.graphdef, state, tokens, checked=checked)

    def forward(self, state: PyTree, tokens: Int[Array, "b t"], cache: Cache) -> tuple[Float[Array, "b t v"], Cache]:
        """Continue ``cache`` with ``tokens``: ``(logits [B, T, V], new cache)``."""
        return self.merge(state).forward(tokens, cache)

    def hidden(self, state: PyTree, tokens: Int[Array, "b t"], cache: Cache | None = None):
        """``(final hidden states [B, T, D], new cache)``."""
        return self.merge(state).hidden(tokens, cache)

    def logits(self, state: PyTree, h: Float[Array, "... d"]) -> Float[Array, "... v"]:
        return self.merge(state).logits(h)

    def init_cache(self, state: PyTree, batch: int, max_len: int) -> Cache:
        return self.merge(state).init_cache(batch, max_len)

    def num_params(self, state: PyTree) -> int:
        return count_params(self.merge(state))
