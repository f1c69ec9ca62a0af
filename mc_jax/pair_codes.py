"""Pair codes of stacked MQAR: one input token id per (key, value-or-none) pair.

Shared by the data generator (:mod:`mc_jax.data.stacked_mqar`), the model config (its input vocabulary) and the
pair-table input layer (:mod:`mc_jax.layers.pair_table`), so that none of them imports another for it.
"""

from __future__ import annotations

import numpy as np

MAX_PAIR_CODES = 2**31 - 1  # codes are int32 token ids


def pair_vocab(num_keys: int, num_values: int) -> int:
    """Codes ``[0, num_keys * (num_values + 1))`` name every (key, value-or-none) input."""
    return num_keys * (num_values + 1)


def pair_codes(keys: np.ndarray, values: np.ndarray, num_values: int) -> np.ndarray:
    """Input codes of ``(key, value)`` pairs; ``value = -1`` encodes a query (a key without a value)."""
    return (np.asarray(keys) * (num_values + 1) + np.asarray(values) + 1).astype(np.int32)


def split_pair_codes(codes, num_values: int):
    """``(keys, values)`` of input codes, ``values = -1`` at queries; works on numpy and jax arrays."""
    return codes // (num_values + 1), codes % (num_values + 1) - 1


__all__ = ["MAX_PAIR_CODES", "pair_codes", "pair_vocab", "split_pair_codes"]
