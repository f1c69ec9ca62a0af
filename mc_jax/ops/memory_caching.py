"""The public entry point of the ops: :func:`memory_caching`, with argument checks and dispatch."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

from mc_jax.ops import aggregation as agg
from mc_jax.ops.cache import MCCache, cache_slots, empty_cache, mc_stream
from mc_jax.ops.memories import MemorySpec, complete_gates, get_memory, initial_state
from mc_jax.ops.naive import naive_memory_caching
from mc_jax.ops.parallel import mc_parallel
from mc_jax.ops.segmentation import SEGMENTATIONS
from mc_jax.ops.utils import largest_divisor_at_most
from mc_jax.typing import Array, Float, PyTree

_STATIC = ("spec", "aggregation", "segmentation", "segment_size", "top_k", "init", "pool", "chunk")
_parallel = jax.jit(mc_parallel, static_argnames=_STATIC + ("kernels",))
_stream = jax.jit(mc_stream, static_argnames=_STATIC)

INITS = ("independent", "checkpoint")
POOLS = ("mean", "sum")
IMPLS = ("auto", "naive", "xla", "pallas")
DEFAULT_CHUNK = {"linear": 64, "deep": 16}

# The kernels ``impl="pallas"`` uses (linear memories, parallel form).
KERNELS = frozenset({"chunk_state", "cache_read_dense", "cache_read_sparse"})
# The kernels ``impl="auto"`` uses per backend, with the largest head dim each was measured faster at: only where
# a kernel beat XLA. On an H100 (benchmarks/results/gpu_h100_2026-11-26, docs/performance.md) the top-k sparse read
# won at Dk = Dv = 64 (whole op 1.4-2.9x, read alone 1.2-20x) and lost at 128 (0.12x); the chunk-state pass and
# the dense read lost to XLA's batched matmuls with their first defaults and were not re-measured after the
# chunk-state tile fix. TPU: the kernels' target layout (grid-carried state in VMEM); not measured here.
AUTO_KERNELS: dict[str, dict[str, int]] = {
    "cpu": {},
    "gpu": {"cache_read_sparse": 64},
    "tpu": {name: 1 << 30 for name in KERNELS},
}


def _check_choice(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(options)}")


def resolve_chunk(spec: MemorySpec, segment_size: int, chunk_size: int | None) -> int:
    """The inner chunk size: it must tile a segment.

    Deep memories take their gradients at chunk starts, so the chunk is part of the model and must divide the
    segment size. For linear memories it is only a speed knob: the largest divisor of the segment size not above
    the request is used.
    """
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}")
    if spec.family == "deep":
        if chunk_size is None:
            return largest_divisor_at_most(segment_size, DEFAULT_CHUNK["deep"])
        if segment_size % chunk_size:
            raise ValueError(
                f"for deep memory {spec.name!r} segment_size ({segment_size}) must be a multiple of chunk_size "
                f"({chunk_size}); change one of them (e.g. chunk_size={largest_divisor_at_most(segment_size, chunk_size)})"
            )
        return chunk_size
    return largest_divisor_at_most(segment_size, chunk_size or DEFAULT_CHUNK["linear"])


@functools.cache
def _warn_fallback(reason: str) -> None:
    warnings.warn(f"impl='pallas': {reason}; using the XLA implementation", stacklevel=3)


def resolve_impl(impl: str, spec: MemorySpec, streaming: bool, head_dim: int = 0) -> frozenset[str]:
    """The Pallas kernels a call uses (empty: all XLA).

    ``xla``: none. ``pallas``: every kernel (:data:`KERNELS`). ``auto``: the kernels measured faster on this backend
    at this ``head_dim`` (``max(Dk, Dv)``; :data:`AUTO_KERNELS`; none on CPU). Deep memories, swla and the streaming
    form have no kernel: ``pallas`` falls back to XLA there with a one-time warning, ``auto`` silently.
    """
    if impl == "xla":
        return frozenset()
    if impl == "pallas":
        kernels = KERNELS
    else:
        table = AUTO_KERNELS.get(jax.default_backend(), {})
        kernels = frozenset(name for name, max_dim in table.items() if head_dim <= max_dim)
    if kernels and (spec.family == "deep" or spec.window != 1):
        if impl == "pallas":
            _warn_fallback(f"no kernel for {'deep ' if spec.family == 'deep' else ''}memory {spec.name!r}")
        return frozenset()
    if kernels and streaming:
        if impl == "pallas":
            _warn_fallback("the streaming form (cache / return_cache) has no kernel yet")
        return frozenset()
    return kernels


def _check_arrays(q, k, v, u) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)) + ((("u", u),) if u is not None else ()):
        if jnp.ndim(x) != 4:
            raise ValueError(f"{name} must be [B, T, H, D] (token-major); got shape {jnp.shape(x)}")
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(f"{name} must be a floating-point array; got dtype {jnp.result_type(x)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {q.shape}; got {k.shape}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, Dv] with B, T, H = {q.shape[:3]}; got {v.shape}")
    if u is not None and u.shape != q.shape:
        raise ValueError(f"u must have the shape of q {q.shape}; got {u.shape}")
    if q.shape[1] < 1:
        raise ValueError("the sequence is empty (T = 0); pass at least one token")


def memory_caching(
    q: Float[Array, "b t h dk"],
    k: Float[Array, "b t h dk"],
    v: Float[Array, "b t h dv"],
    *,
    u: Float[Array, "b t h dk"] | None = None,
    memory: str = "linear",
    aggregation: str = "residual",
    segmentation: str = "constant",
    segment_size: int = 64,
    top_k: int | None = None,
    init: str = "independent",
    pool: str = "mean",
    gates: dict[str, Float[Array, "b t h"]] | None = None,
    params: PyTree | None = None,
    chunk_size: int | None = None,
    impl: str = "auto",
    return_cache: bool = False,
    cache: MCCache | None = None,
):
    """Memory Caching over a base recurrent memory (DESIGN.md section 3).

    Args:
        q, k: queries and keys ``[B, T, H, Dk]``; no scaling or normalisation is applied here.
        v: values ``[B, T, H, Dv]``.
        u: gate / router queries ``[B, T, H, Dk]``; required by ``grm``, ``soup`` and ``ssc``.
        memory: ``linear``, ``gated_linear``, ``delta``, ``swla``, ``dla`` or ``titans``.
        aggregation: ``residual``, ``grm``, ``soup`` or ``ssc``.
        segmentation: ``constant`` (segments of ``segment_size``) or ``log`` (Fenwick groups of blocks).
        segment_size: tokens per segment (``constant``) or per smallest block (``log``).
        top_k: cached memories kept per token by ``ssc`` (the online one is always kept).
        init: ``independent`` (every segment starts from the initial state) or ``checkpoint`` (continues).
        pool: ``mean`` or ``sum`` of a segment's keys for the gate / router logits.
        gates: per-token ``[B, T, H]`` gates: ``log_decay`` (gated_linear; optional for delta), ``beta`` (delta),
            ``beta_prev``, ``lam`` (swla; ``log_decay`` optional), ``theta``, ``alpha`` (optional), ``eta`` (titans)
            for deep memories.
        params: initial memory: linear ``[B, H, Dk, Dv]`` / ``[H, Dk, Dv]`` or None (zeros); deep (required)
            ``{"W1": [H, D, E*D], "W2": [H, E*D, D]}``, optionally with a leading batch axis.
        chunk_size: inner chunk size; must divide ``segment_size`` for deep memories (default: a divisor <= 16).
        impl: ``xla`` (chunk-wise XLA), ``pallas`` (Pallas kernels for the state pass and the cached read of linear
            memories; interpret mode on CPU), ``auto`` (per backend, the kernels measured faster than XLA: see
            :data:`AUTO_KERNELS`; XLA on CPU) or ``naive`` (the per-token definition; slow). Where no kernel covers
            a configuration (deep memories, swla, the streaming form) ``pallas`` falls back to XLA with a one-time warning.
        return_cache: also return an :class:`MCCache` to continue from (decoding, or a second call).
        cache: continue from this cache (from ``return_cache=True`` or :func:`init_cache`).

    Returns:
        ``y [B, T, H, Dv]`` in the dtype of ``q``, or ``(y, cache)`` when ``return_cache`` is set.
    """
    spec = get_memory(memory)
    _check_choice("aggregation", aggregation, agg.AGGREGATIONS)
    _check_choice("segmentation", segmentation, SEGMENTATIONS)
    _check_choice("init", init, INITS)
    _check_choice("pool", pool, POOLS)
    _check_choice("impl", impl, IMPLS)
    if not isinstance(segment_size, int) or segment_size < 1:
        raise ValueError(f"segment_size must be a positive int; got {segment_size!r}")
    if aggregation == "ssc":
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"aggregation='ssc' needs top_k >= 1 (cached memories kept per token); got {top_k!r}")
    elif top_k is not None:
        raise ValueError(f"top_k is only used by aggregation='ssc'; drop it or use ssc (got aggregation={aggregation!r})")
    _check_arrays(q, k, v, u)
    if aggregation in agg.GATED and u is None:
        raise ValueError(f"aggregation={aggregation!r} needs u [B, T, H, Dk] for its gate / router logits")
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    chunk = resolve_chunk(spec, segment_size, chunk_size)
    gates = complete_gates(spec, gates, (b, t, h))
    kwargs = dict(aggregation=aggregation, segmentation=segmentation, segment_size=segment_size, top_k=top_k,
                  init=init, pool=pool)
    u_used = u if aggregation in agg.GATED else None

    if impl == "naive":
        if return_cache or cache is not None:
            raise ValueError("impl='naive' is the per-token definition without a cache; use impl='xla' for caches")
        state = initial_state(spec, params, b, h, dk, dv)
        y = naive_memory_caching(q, k, v, u_used, gates, state, spec, chunk_size=chunk, **kwargs)
        return y.astype(q.dtype)

    kernels = resolve_impl(impl, spec, streaming=cache is not None or return_cache, head_dim=max(dk, dv))
    if cache is None and not return_cache:
        state = initial_state(spec, params, b, h, dk, dv)
        y = _parallel(q, k, v, u_used, gates, state, spec=spec, chunk=chunk, kernels=kernels, **kwargs)
        return y.astype(q.dtype)

    if cache is None:  # a fresh cache sized for this call; use init_cache to leave room for more tokens
        state = initial_state(spec, params, b, h, dk, dv)
        cache = empty_cache(spec, state, max_len=t, segmentation=segmentation, segment_size=segment_size,
                            init=init, pool=pool, chunk=chunk)
    else:
        expected = (spec.name, segmentation, segment_size, init, pool, chunk)
        if cache.config != expected:
            raise ValueError(f"the cache was built for (memory, segmentation, segment_size, init, pool, chunk) = "
                             f"{cache.config}, but this call uses {expected}")
        if params is not None:
            raise ValueError("params is the initial memory of a new sequence; a call that continues a cache "
                             "takes it from the cache (drop params)")
        lead = jnp.shape(cache.slot_keys)[1:4]
        if lead != (b, h, dk):
            raise ValueError(f"the cache holds [B, H, Dk] = {lead}, but q has {(b, h, dk)}")
        if not isinstance(cache.position, jax.core.Tracer):  # under jit the capacity is the caller's contract
            needed = cache_slots(int(cache.position) + t, segmentation, segment_size)
            if needed > cache.capacity:
                raise ValueError(
                    f"the cache has {cache.capacity} slots but {int(cache.position) + t} tokens need {needed}; "
                    f"create it with init_cache(..., max_len=<total tokens>) and pass it to the first call")
    y, cache = _stream(q, k, v, u_used, gates, cache, spec=spec, chunk=chunk, **kwargs)
    y = y.astype(q.dtype)
    return (y, cache) if return_cache else y


def init_cache(
    batch: int,
    heads: int,
    dk: int,
    dv: int,
    *,
    max_len: int,
    memory: str = "linear",
    segmentation: str = "constant",
    segment_size: int = 64,
    init: str = "independent",
    pool: str = "mean",
    params: PyTree | None = None,
    chunk_size: int | None = None,
) -> MCCache:
    """An empty cache with room for ``max_len`` tokens, for streaming / decoding with :func:`memory_caching`."""
    spec = get_memory(memory)
    _check_choice("segmentation", segmentation, SEGMENTATIONS)
    _check_choice("init", init, INITS)
    _check_choice("pool", pool, POOLS)
    if not isinstance(segment_size, int) or segment_size < 1:
        raise ValueError(f"segment_size must be a positive int; got {segment_size!r}")
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int; got {max_len!r}")
    chunk = resolve_chunk(spec, segment_size, chunk_size)
    state = initial_state(spec, params, batch, heads, dk, dv)
    return empty_cache(spec, state, max_len=max_len, segmentation=segmentation, segment_size=segment_size,
                       init=init, pool=pool, chunk=chunk)
