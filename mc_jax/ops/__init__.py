"""Pure-functional Memory Caching: base memories, segmentations, aggregations, the whole-sequence and streaming forms.

Entry point: :func:`memory_caching`. Everything here is a pure XLA function over arrays and pytrees (no Flax, no
kernels): this package imports nothing from ``mc_jax`` above it (``tools/check_imports.py`` checks).
"""

from mc_jax.ops.aggregation import AGGREGATIONS
from mc_jax.ops.cache import CacheConfig, MCCache
from mc_jax.ops.memories import MEMORIES
from mc_jax.ops.memory_caching import init_cache, memory_caching
from mc_jax.ops.segmentation import SEGMENTATIONS, cached_ranges

__all__ = ["AGGREGATIONS", "CacheConfig", "MEMORIES", "MCCache", "SEGMENTATIONS", "cached_ranges", "init_cache",
           "memory_caching"]
