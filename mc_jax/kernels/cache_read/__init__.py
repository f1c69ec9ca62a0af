"""Gamma-weighted read of cached linear memories (the MC read pass) as a Pallas kernel: dense and top-k sparse."""

from mc_jax.kernels.cache_read.api import dense_mix, slot_indices, sparse_mix
from mc_jax.kernels.cache_read.config import BlockSizes

__all__ = ["BlockSizes", "dense_mix", "slot_indices", "sparse_mix"]
