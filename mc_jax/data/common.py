"""Shared pieces of the data layer: the label ignore value, example types, seeding.

Every generator in :mod:`mc_jax.data` builds example ``index`` from its own
:class:`numpy.random.Generator`, seeded by ``(stream, seed, index)``. Any example can
therefore be rebuilt on its own, in any order, on any host, and a pipeline can resume
from an index without storing generated files.
"""

from __future__ import annotations

import zlib
from typing import TypedDict

import numpy as np

IGNORE_INDEX: int = -100
"""Label value for positions that carry no target (ignored by losses and metrics)."""

EVAL_SEED: int = 1_000_003
"""Seed of the held-out evaluation examples (disjoint from the training stream's seeds by convention)."""


class Example(TypedDict):
    """One next-token example: ``inputs[t]`` is trained to predict ``labels[t]``."""

    inputs: np.ndarray  # int32[L]
    labels: np.ndarray  # int32[L]; IGNORE_INDEX where there is no target


def stream_id(name: str) -> int:
    """A stable 32-bit id for a named random stream (so that tasks sharing a seed differ)."""
    return zlib.crc32(name.encode("utf-8"))


def example_rng(stream: int, seed: int, index: int) -> np.random.Generator:
    """The generator for example ``index`` of ``stream`` under ``seed``.

    Raises:
        ValueError: if ``seed`` or ``index`` is negative.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}; pass a non-negative integer seed.")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}; negative indices are not supported.")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([stream, seed, index])))


def check_index(index: int, length: int) -> int:
    """Validate a random-access index against ``length``; negative indices count from the end."""
    index = int(index)
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for a source of {length} examples")
    return index


class SeededSource:
    """Base of the synthetic random-access sources: ``source[i]`` is ``self.example(i)``, a pure function of
    ``(config, seed, i)``; ``len(source)`` is ``num_examples``. Subclasses define :meth:`example`."""

    def __init__(self, config, num_examples: int, seed: int = 0) -> None:
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}.")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}.")
        self.config = config
        self.num_examples = num_examples
        self.seed = seed

    def example(self, index: int) -> Example:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> Example:
        return self.example(check_index(index, self.num_examples))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r}, num_examples={self.num_examples}, seed={self.seed})"
