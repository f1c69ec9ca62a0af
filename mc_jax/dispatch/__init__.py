"""The dispatch layer: which implementation of each Memory Caching stage a call runs (above ``ops`` and ``kernels``).

``mc_jax.ops`` is pure XLA math; ``mc_jax.kernels`` are Pallas kernels checked against it. This package joins them:

* :mod:`.table`: the implementation table per stage (``state_pass``, ``read_dense``, ``read_blocked``,
  ``weights_read``), an ordered list of :class:`~mc_jax.dispatch.table.Implementation` entries ending in the XLA
  one. Adding an algorithm is an entry in :data:`~mc_jax.dispatch.table.TABLE` (a name, the function, where it applies).
* :mod:`.policy`: which entries ``impl="xla" | "pallas" | "auto"`` enables, per backend (:data:`AUTO_KERNELS`, with
  the measurements behind it), and the one-time fall-back warnings.
* :mod:`.tiling`: the kernels' tiling choices inside ``memory_caching``.
* :mod:`.cost`: the FLOP counts of the read algorithms the table chooses between by shape (state read vs the
  segment-gated quadratic form of linear memories).

On import it installs :func:`~mc_jax.dispatch.policy.plan` as the planner of :func:`mc_jax.ops.memory_caching`
(``mc_jax/__init__.py`` imports it, so every ``import mc_jax...`` has it).
"""

from mc_jax.dispatch.policy import AUTO_KERNELS, KERNELS, plan, resolve_impl
from mc_jax.dispatch.table import TABLE, Implementation, build_stages
from mc_jax.ops.memory_caching import register_planner

register_planner(plan)

__all__ = ["AUTO_KERNELS", "KERNELS", "TABLE", "Implementation", "build_stages", "plan", "resolve_impl"]
