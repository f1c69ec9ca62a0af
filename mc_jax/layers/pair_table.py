"""Input and output of a model that reads (key, value) pairs through frozen embedding tables (stacked MQAR).

    x_t     = W_in [K[key_t] ; V[value_t]]      (V[-1] = 0: a query carries its key only)      W_in: 2d -> d_model
    logit_v = <W_out h_t, V[v]>                 (dot products with every frozen value row)     W_out: d_model -> d

``K`` (``num_keys x d``) and ``V`` (``num_values x d``) are unit-norm Gaussian rows, ``d = d_model``, drawn from
``table_seed`` with numpy (the same tables on every platform and process). They are constants of the model, not
parameters: nothing trains, decays, shards or checkpoints them, and a checkpoint's config rebuilds them exactly.
Only ``W_in`` and ``W_out`` are learned. See :mod:`mc_jax.data.stacked_mqar` for the integer codes.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mc_jax.config import ModelConfig
from mc_jax.layers.mlp import dense
from mc_jax.pair_codes import split_pair_codes
from mc_jax.typing import Array, Float, Int


@functools.lru_cache(maxsize=8)
def unit_table(rows: int, dim: int, seed: int, stream: int) -> np.ndarray:
    """``[rows, dim]`` float32 rows of unit L2 norm (read-only), a pure function of ``(seed, stream)``."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream])))
    table = rng.standard_normal((rows, dim))
    table = (table / np.linalg.norm(table, axis=-1, keepdims=True)).astype(np.float32)
    table.setflags(write=False)
    return table


def pair_tables(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """The frozen key table ``[num_keys, d_model]`` and value table ``[vocab_size, d_model]`` of ``config``."""
    return (unit_table(config.num_keys, config.d_model, config.table_seed, 0),
            unit_table(config.vocab_size, config.d_model, config.table_seed, 1))


class PairTableIO(nnx.Module):
    """Embedding and read-out of pair codes through the frozen tables; see the module docstring."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.d_model
        kw = dict(rngs=rngs, dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))
        self.in_proj = dense(2 * d, d, std=config.init_std, **kw)
        self.out_proj = dense(d, d, std=config.init_std, **kw)

    def embed(self, codes: Int[Array, "b t"]) -> Float[Array, "b t d"]:
        keys, values = split_pair_codes(codes, self.config.vocab_size)
        key_table, value_table = (jnp.asarray(t) for t in pair_tables(self.config))
        has_value = (values >= 0)[..., None]
        pairs = jnp.concatenate([key_table[keys], jnp.where(has_value, value_table[jnp.maximum(values, 0)], 0.0)],
                                axis=-1)
        return self.in_proj(pairs.astype(self.in_proj.dtype))

    def logits(self, h: Float[Array, "... d"]) -> Float[Array, "... v"]:
        value_table = jnp.asarray(pair_tables(self.config)[1])
        return self.out_proj(h).astype(jnp.float32) @ value_table.T


__all__ = ["PairTableIO", "pair_tables", "unit_table"]
