"""Pallas kernels for the hot spots of Memory Caching (DESIGN.md section 5).

Each kernel package mirrors one XLA op of :mod:`mc_jax.ops` and never owns math it cannot be checked against:
  * ``reference.py`` calls the XLA op (the ground truth and the backward pass),
  * ``pallas.py`` holds the kernel (one body, a small ``strategy`` switch: ``"gpu"`` loops over the carried axis
    inside the kernel, ``"tpu"`` puts it on an ``"arbitrary"`` grid axis with the carry in VMEM scratch),
  * ``api.py`` wraps the kernel in a ``jax.custom_vjp`` whose backward is the ``jax.vjp`` of the XLA reference
    (recomputed, exact), a drop-in for the op with the same arguments,
  * ``config.py`` (where present) holds a frozen, validated ``BlockSizes``.

Kernels: :mod:`mc_jax.kernels.chunk_state` (sequential state pass of the linear memories),
:mod:`mc_jax.kernels.cache_read` (gamma-weighted read of cached linear memories, dense and top-k sparse).
Deep memories (``dla``, ``titans``) stay on XLA.

Kernels import :mod:`mc_jax.ops` (for their references) and nothing above it. Which kernel a call of
``memory_caching`` uses, their tiling inside it and the fall-back warnings are decided by :mod:`mc_jax.dispatch`.
"""
