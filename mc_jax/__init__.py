"""mc_jax: Memory Caching (RNNs with growing memory) in JAX.

The math lives in :mod:`mc_jax.ops` as pure functions; see ``mc_jax.ops.memory_caching``.
"""

from mc_jax import ops
from mc_jax.ops import memory_caching

__all__ = ["ops", "memory_caching"]
__version__ = "0.1.0"
