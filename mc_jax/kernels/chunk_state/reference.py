"""XLA reference of the chunk-state pass: the op in :mod:`mc_jax.ops.memories.linear`, and its per-chunk terms.

``chunk_terms`` is the parallel (over chunks) part of ``linear.state_pass`` -- the decayed keys, the WY terms of the
delta rule and the chunk decays -- that the kernel takes as inputs; ``scan_terms`` is the sequential part in
``lax.scan``. Both are the op's own functions, so the kernel's inputs are the op's by construction.
"""

from __future__ import annotations

from mc_jax.ops.memories import linear

state_pass = linear.state_pass  # (k, v, gates, state, chunk, valid=None) -> (starts, u, final)
read = linear.read  # (q, k, gates, starts, u, chunk) -> y
chunk_terms = linear.chunk_terms  # (k, v, gates, chunk) -> (k_to_end, u_hat, w | None, total)
scan_terms = linear.scan_chunks  # (terms, state) -> (starts, u, final)
