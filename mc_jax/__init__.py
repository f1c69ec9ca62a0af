"""mc_jax: Memory Caching (RNNs with growing memory) in JAX.

The math lives in :mod:`mc_jax.ops` as pure functions; see ``mc_jax.ops.memory_caching``.
"""

from mc_jax import _xla_cpu

_xla_cpu.apply()  # before anything creates JAX's CPU backend (an XLA:CPU miscompilation in jaxlib 0.10)

from mc_jax import ops  # noqa: E402
from mc_jax import dispatch  # noqa: E402,F401  (installs the impl planner of ops.memory_caching: kernels, auto policy)
from mc_jax.ops import memory_caching  # noqa: E402

__all__ = ["ops", "memory_caching"]
__version__ = "0.1.0"
