"""Stacked ("continuous") multi-query associative recall: a pure memory-capacity probe.

Reference: the Zoology repository's stacked MQAR (``zoology/data/stacked_mqar.py``, 2026); EVALUATION.md section 7.1
measured it on this machine kind (linear attention ~19.5% vs ~39% with MC-GRM, seed spread <= 0.5 points).

Unlike token MQAR no position has to learn to pair a key with the token after it: context position ``i`` carries
the pair itself, the concatenation ``[key_emb(k_i) ; value_emb(v_i)]`` of two rows of frozen unit-norm tables, and
query position ``kv + j`` carries ``[key_emb(k_pi(j)) ; 0]`` for a fresh random order ``pi`` of the keys. The
target at a query is the value index ``v_pi(j)``. So one mixer layer suffices and accuracy measures how many pairs
the layer's state can store and retrieve, which is what memory caching changes. ``L = 2 kv``::

    position:  0        1        ...  kv-1        | kv          ...  2kv-1
    inputs:    (k1,v1)  (k2,v2)  ...  (kkv,vkv)   | (k_pi1, -)  ...  (k_pikv, -)
    labels:    -100     -100     ...  -100        | v_pi1       ...  v_pikv

Integer encoding (so the example is an ordinary ``int32[L]`` row that batches, shards and checkpoints like tokens):
``code = key * (num_values + 1) + value + 1`` for a pair and ``key * (num_values + 1)`` for a query (``value = -1``
means "no value"); :func:`split_pair_codes` inverts it. The frozen tables live with the model
(:mod:`mc_jax.layers.pair_table`); the data only names rows. Keys are drawn without replacement from
``[0, num_keys)`` and values without replacement from ``[0, num_values)`` per sequence, so chance is
``1 / num_values`` and every query has exactly one right answer.

With ``min_kv_pairs < num_kv_pairs`` every example draws its own number of pairs ``n`` uniformly from
``[min_kv_pairs, num_kv_pairs]`` (a curriculum in the spirit of Zoology's mixture of kv sizes: sequences with few
pairs give a strong learning signal early); its ``2n`` positions come first and the rest of the ``2 kv`` positions are
query codes of key 0 without labels (they come after every labelled position, so a causal model never reads them).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mc_jax.data.common import IGNORE_INDEX, Example, SeededSource, example_rng, stream_id
from mc_jax.pair_codes import MAX_PAIR_CODES, pair_codes, pair_vocab, split_pair_codes

_STACKED_STREAM = stream_id("stacked_mqar")


@dataclasses.dataclass(frozen=True)
class StackedMQARConfig:
    """Shape of the stacked MQAR task.

    Attributes:
        num_kv_pairs: ``kv`` pairs per sequence (each queried once); the sequence length is ``2 kv``.
        num_keys: rows of the frozen key table.
        num_values: rows of the frozen value table (the number of answer classes).
        min_kv_pairs: fewest pairs of an example (``None`` = always ``num_kv_pairs``); see the module docstring.
    """

    num_kv_pairs: int = 32
    num_keys: int = 1024
    num_values: int = 1024
    min_kv_pairs: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_kv_pairs", "num_keys", "num_values"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if self.min_kv_pairs is not None and (isinstance(self.min_kv_pairs, bool) or not isinstance(
                self.min_kv_pairs, int) or not 1 <= self.min_kv_pairs <= self.num_kv_pairs):
            raise ValueError(f"min_kv_pairs must be an int in [1, num_kv_pairs={self.num_kv_pairs}] or None, got "
                             f"{self.min_kv_pairs!r}.")
        if self.input_vocab > MAX_PAIR_CODES:
            raise ValueError(f"num_keys * (num_values + 1) = {self.input_vocab} pair codes do not fit in int32 "
                             f"(at most {MAX_PAIR_CODES}); use smaller tables.")
        for name in ("num_keys", "num_values"):
            if getattr(self, name) < self.num_kv_pairs:
                raise ValueError(f"{name} ({getattr(self, name)}) must be at least num_kv_pairs "
                                 f"({self.num_kv_pairs}): the pairs of a sequence use distinct keys and values.")

    @property
    def seq_len(self) -> int:
        return 2 * self.num_kv_pairs

    @property
    def input_vocab(self) -> int:
        """Number of distinct input codes (``num_keys * (num_values + 1)``)."""
        return pair_vocab(self.num_keys, self.num_values)


def generate_stacked_mqar(config: StackedMQARConfig, rng: np.random.Generator) -> Example:
    """Draw one stacked MQAR example from ``rng``; see the module docstring for the layout."""
    kv = config.num_kv_pairs
    if config.min_kv_pairs is not None and config.min_kv_pairs < kv:
        kv = int(rng.integers(config.min_kv_pairs, config.num_kv_pairs + 1))
    keys = rng.choice(config.num_keys, size=kv, replace=False)
    values = rng.choice(config.num_values, size=kv, replace=False)
    order = rng.permutation(kv)
    pad = config.seq_len - 2 * kv  # unlabelled key-0 queries after everything labelled
    inputs = np.concatenate([pair_codes(keys, values, config.num_values),
                             pair_codes(keys[order], np.full(kv, -1), config.num_values),
                             pair_codes(np.zeros(pad, np.int64), np.full(pad, -1), config.num_values)])
    labels = np.concatenate([np.full(kv, IGNORE_INDEX), values[order], np.full(pad, IGNORE_INDEX)]).astype(np.int32)
    return {"inputs": inputs.astype(np.int32), "labels": labels}


def stacked_mqar_example(config: StackedMQARConfig, seed: int, index: int) -> Example:
    """Example ``index`` of the stacked-MQAR stream ``seed`` (pure function of its arguments)."""
    return generate_stacked_mqar(config, example_rng(_STACKED_STREAM, seed, index))


class StackedMQARSource(SeededSource):
    """Random-access stacked-MQAR source: ``source[i]`` is ``stacked_mqar_example(config, seed, i)``."""

    def example(self, index: int) -> Example:
        return stacked_mqar_example(self.config, self.seed, index)


def query_key_positions(inputs: np.ndarray, num_values: int) -> np.ndarray:
    """For each position of ``inputs`` (``[..., 2kv]``): the context position where the key it queries was written
    (``-1`` at context positions). Used to score recall by the segment a key was cached in."""
    inputs = np.asarray(inputs)
    kv = inputs.shape[-1] // 2
    keys, _ = split_pair_codes(inputs, num_values)
    ctx, qry = keys[..., :kv], keys[..., kv:]
    match = qry[..., :, None] == ctx[..., None, :]  # [..., kv queries, kv context]
    pos = np.where(match.any(-1), match.argmax(-1), -1)
    return np.concatenate([np.full(ctx.shape, -1), pos], axis=-1)


__all__ = [
    "MAX_PAIR_CODES", "StackedMQARConfig", "StackedMQARSource", "generate_stacked_mqar", "pair_codes", "pair_vocab",
    "query_key_positions", "split_pair_codes", "stacked_mqar_example",
]
