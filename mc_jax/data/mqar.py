"""Multi-query associative recall (MQAR), following Zoology's ``multiquery_ar``.

Reference: Arora, Eyuboglu et al., "Zoology: Measuring and Improving Recall in Efficient
Language Models" (arXiv 2312.04927), code ``zoology/data/multiquery_ar.py``.

Layout of one example of length ``L`` (``kv`` pairs, ``P`` passes)::

    position:  0   1   2   3  ...  2kv*P | 2kv*P + 2g_1 ...           L-1
    inputs:    k1  v1  k2  v2 ...        | 0 .. k_i 0 .. k_j 0 ..
    labels:   -100 ...                   | ..  v_i  ..  v_j  ..   (-100 elsewhere)

* Token 0 is the filler. Keys are drawn without replacement from ``[1, V/2)`` and values
  from ``[V/2, V)``; pair ``i`` is ``(keys[i], values[i])``.
* The context holds the ``kv`` pairs ``k1 v1 ... k_kv v_kv``, repeated ``P`` times.
* The rest of the sequence has ``(L - 2kv*P) / 2`` query slots at even offsets. Each key
  is queried exactly once, at slot ``g`` drawn without replacement with
  ``p(g) ∝ a (g+1)^(a-1)`` (``a = power_a``; small ``a`` puts queries near the start).
* Targets are next-token: the sequence is built with length ``L+1`` with the value right
  after each queried key, then shifted. So ``labels[t] = value`` at the position ``t``
  of the queried key itself (the value is the token that *follows* it), and the value
  never appears in the query region of ``inputs``.
* With ``random_non_queries`` every remaining 0 of ``inputs`` is replaced by a token
  drawn uniformly from ``[0, V)`` (it may collide with keys or values; it has no label).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from mc_jax.data.common import IGNORE_INDEX, Example, SeededSource, example_rng, stream_id

_MQAR_STREAM = stream_id("mqar")


@dataclasses.dataclass(frozen=True)
class MQARConfig:
    """Shape of the MQAR task (Zoology defaults for ``power_a`` and ``random_non_queries``).

    Attributes:
        vocab_size: ``V``; keys use ``[1, V/2)`` and values ``[V/2, V)``. Must exceed
            ``seq_len`` (Zoology's constraint).
        seq_len: ``L``, the length of ``inputs`` and ``labels``. Must be even.
        num_kv_pairs: ``kv``, the number of key-value pairs (each queried once).
        power_a: exponent ``a`` of the query-gap power law, in ``(0, 1]``; 1 is uniform.
        num_passes: how many times the context repeats (JRT-style); Zoology default 1.
        random_non_queries: replace the filler zeros of ``inputs`` by random tokens.
    """

    vocab_size: int = 8192
    seq_len: int = 64
    num_kv_pairs: int = 4
    power_a: float = 0.01
    num_passes: int = 1
    random_non_queries: bool = True

    def __post_init__(self) -> None:
        if self.seq_len <= 0 or self.seq_len % 2:
            raise ValueError(
                f"seq_len must be a positive even number, got {self.seq_len}; MQAR places queries at even offsets."
            )
        if self.vocab_size <= self.seq_len:
            raise ValueError(
                f"vocab_size ({self.vocab_size}) must be greater than seq_len ({self.seq_len}); "
                "increase vocab_size or decrease seq_len."
            )
        if self.num_kv_pairs < 1:
            raise ValueError(f"num_kv_pairs must be >= 1, got {self.num_kv_pairs}.")
        if self.num_passes < 1:
            raise ValueError(f"num_passes must be >= 1, got {self.num_passes}.")
        needed = 2 * self.num_kv_pairs * self.num_passes + 2 * self.num_kv_pairs
        if needed > self.seq_len:
            raise ValueError(
                f"seq_len ({self.seq_len}) is too short for {self.num_kv_pairs} pairs and "
                f"{self.num_passes} pass(es): need 2*kv*passes + 2*kv = {needed} <= seq_len "
                "(4*num_kv_pairs with one pass); increase seq_len or reduce num_kv_pairs."
            )
        if not 0.0 < self.power_a <= 1.0:
            raise ValueError(f"power_a must be in (0, 1], got {self.power_a}; use 0.01 (Zoology) or 1.0 (uniform).")

    @property
    def context_len(self) -> int:
        """Number of positions taken by the key-value context (all passes)."""
        return 2 * self.num_kv_pairs * self.num_passes

    @property
    def num_query_slots(self) -> int:
        """Number of even-offset slots in the query region."""
        return (self.seq_len - self.context_len) // 2


@functools.lru_cache(maxsize=64)
def query_gap_probs(num_slots: int, power_a: float) -> np.ndarray:
    """Normalised power-law probabilities ``p(g) ∝ a (g+1)^(a-1)`` over ``g < num_slots``."""
    p = power_a * np.arange(1, num_slots + 1, dtype=np.float64) ** (power_a - 1.0)
    p /= p.sum()
    p.setflags(write=False)
    return p


def generate_mqar(config: MQARConfig, rng: np.random.Generator) -> Example:
    """Draw one MQAR example from ``rng``; see the module docstring for the layout."""
    kv, seq_len, vocab = config.num_kv_pairs, config.seq_len, config.vocab_size
    half = vocab // 2
    # vocab > seq_len >= 4*kv guarantees enough distinct keys and values.
    keys = 1 + rng.choice(half - 1, size=kv, replace=False)
    values = half + rng.choice(vocab - half, size=kv, replace=False)

    inputs = np.zeros(seq_len, dtype=np.int32)
    context = np.empty(2 * kv, dtype=np.int32)
    context[0::2], context[1::2] = keys, values
    inputs[: config.context_len] = np.tile(context, config.num_passes)

    probs = query_gap_probs(config.num_query_slots, config.power_a)
    gaps = rng.choice(config.num_query_slots, size=kv, replace=False, p=probs)
    query_pos = config.context_len + 2 * gaps
    inputs[query_pos] = keys

    labels = np.full(seq_len, IGNORE_INDEX, dtype=np.int32)
    labels[query_pos] = values

    if config.random_non_queries:
        filler = inputs == 0
        inputs[filler] = rng.integers(0, vocab, size=int(filler.sum()), dtype=np.int32)
    return {"inputs": inputs, "labels": labels}


def mqar_example(config: MQARConfig, seed: int, index: int) -> Example:
    """Example ``index`` of the MQAR stream ``seed`` (pure function of its arguments)."""
    return generate_mqar(config, example_rng(_MQAR_STREAM, seed, index))


class MQARSource(SeededSource):
    """Random-access MQAR source: ``source[i]`` is ``mqar_example(config, seed, i)``.

    Use different seeds for train and test (Zoology draws them from disjoint ranges).
    """

    def example(self, index: int) -> Example:
        return mqar_example(self.config, self.seed, index)
