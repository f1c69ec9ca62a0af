"""Pure-functional Memory Caching: base memories, segmentations, aggregations, the parallel and streaming forms.

Entry point: :func:`memory_caching`. Everything here is a pure function over arrays and pytrees (no Flax).
"""

from mc_jax.ops.aggregation import AGGREGATIONS
from mc_jax.ops.cache import MCCache
from mc_jax.ops.memories import MEMORIES
from mc_jax.ops.memory_caching import init_cache, memory_caching
from mc_jax.ops.segmentation import SEGMENTATIONS, cached_ranges

__all__ = ["AGGREGATIONS", "MEMORIES", "MCCache", "SEGMENTATIONS", "cached_ranges", "init_cache", "memory_caching"]
