"""Work-around for an XLA:CPU miscompilation in jaxlib 0.10, applied when :mod:`mc_jax` is imported.

jaxlib 0.10's XLA:CPU hands fused graphs of dots, element-wise ops and reductions to YNNPACK ("ynn fusions",
``--xla_cpu_experimental_ynn_fusion_type``, on by default). Some of those fused programs read uninitialised memory:
``jax.jit(lambda q, k, v: jnp.sum(memory_caching(q, k, v, segment_size=64, chunk_size=64) ** 2, -1))`` on
``[2, 64, 1, 32]`` inputs (one chunk, the uncached layer of the default recall run) returned ``inf`` / ``nan`` /
1e30-sized values in most processes and the right numbers in others (the compiled HLO was identical; eager mode and
the same function without the trailing reduction were right). In training it showed up as a held-out accuracy of
0.1% for a model whose training accuracy was 21%. Every listed fusion type except ``individual_dot`` reproduced it;
with the fusions off the results are right in every process and the tiny default trains at the same speed
(2-core CPU, 300 steps: 58.5k vs 56.3k tokens/s cached, 76.2k vs 75.2k uncached).

So for jaxlib 0.10.x this module adds ``--xla_cpu_experimental_ynn_fusion_type=`` (no ynn fusions) to ``XLA_FLAGS``
before JAX creates its CPU backend. It leaves ``XLA_FLAGS`` alone when the flag is already set (your choice wins),
for other jaxlib versions (XLA aborts on flags it does not know), and when ``MC_JAX_KEEP_XLA_FLAGS=1``. If the CPU
backend already exists when mc_jax is imported, the flag can no longer take effect: a warning says so (set the flag
yourself, or import mc_jax before running any JAX computation).
"""

from __future__ import annotations

import os
import warnings

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
AFFECTED_JAXLIB = ((0, 10), (0, 11))  # [first, end) of the (major, minor) versions known to need the flag
OPT_OUT_ENV = "MC_JAX_KEEP_XLA_FLAGS"


def _version(text: str) -> tuple[int, int]:
    parts = text.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (-1, -1)


def flags_with_workaround(flags: str, jaxlib_version: str) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the ynn-fusion flag added when ``jaxlib_version`` needs it."""
    first, end = AFFECTED_JAXLIB
    if YNN_FLAG in flags or not first <= _version(jaxlib_version) < end:
        return flags
    return f"{flags} {YNN_FLAG}=".strip()


def _cpu_backend_exists() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - the private module moved: assume not yet initialised
        return False
    return bool(getattr(xla_bridge, "_backends", None))


def apply() -> bool:
    """Add the flag to ``os.environ["XLA_FLAGS"]`` where needed; ``True`` if it changed the environment."""
    if os.environ.get(OPT_OUT_ENV, "") not in ("", "0"):
        return False
    import jaxlib

    flags = os.environ.get("XLA_FLAGS", "")
    new = flags_with_workaround(flags, getattr(jaxlib, "__version__", ""))
    if new == flags:
        return False
    if _cpu_backend_exists():
        warnings.warn(
            f"mc_jax: JAX's backends were created before mc_jax was imported, so the work-around for an XLA:CPU "
            f"miscompilation in jaxlib {jaxlib.__version__} cannot take effect and CPU results of jitted code may be "
            f"wrong. Set XLA_FLAGS='{YNN_FLAG}=' before starting Python, or import mc_jax before running any JAX "
            f"computation (see mc_jax/_xla_cpu.py).", RuntimeWarning, stacklevel=3)
        return False
    os.environ["XLA_FLAGS"] = new
    return True


__all__ = ["AFFECTED_JAXLIB", "OPT_OUT_ENV", "YNN_FLAG", "apply", "flags_with_workaround"]
