"""The public entry point of the ops: :func:`memory_caching`, with argument checks, and :func:`init_cache`.

``impl`` selects an implementation of each swappable stage (:class:`~mc_jax.ops.stages.Stages`). This package is
pure XLA math and imports nothing above it: the kernels and the per-backend ``auto`` policy live in
:mod:`mc_jax.dispatch`, which installs itself here with :func:`register_planner` when :mod:`mc_jax` is imported
(``import mc_jax.ops`` imports :mod:`mc_jax` first, so the planner is always present). Without a planner ``xla`` and
``auto`` run XLA and ``pallas`` is refused.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from mc_jax.ops import aggregation as agg
from mc_jax.ops.cache import CacheConfig, MCCache, empty_cache, mc_stream
from mc_jax.ops.decode import mc_decode_step
from mc_jax.ops.memories import MemorySpec, check_gate_values, complete_gates, get_memory, initial_state
from mc_jax.ops.naive import naive_memory_caching
from mc_jax.ops.segmentation import SEGMENTATIONS, cache_slots, cache_token_capacity
from mc_jax.ops.sequence import mc_sequence
from mc_jax.ops.stages import XLA_STAGES, Stages
from mc_jax.ops.utils import ceil_div, check_choice, check_positive, largest_divisor_at_most
from mc_jax.typing import Array, Float, PyTree

_STATIC = ("spec", "aggregation", "segmentation", "segment_size", "top_k", "init", "pool", "chunk", "stages")
_sequence = jax.jit(mc_sequence, static_argnames=_STATIC)
_stream = jax.jit(mc_stream, static_argnames=_STATIC)
_decode = jax.jit(mc_decode_step, static_argnames=_STATIC)  # one token, no inner-chunk padding

INITS = ("independent", "checkpoint")
IMPLS = ("auto", "naive", "xla", "pallas")

# impl, spec, streaming, head_dim -> Stages; installed by mc_jax.dispatch.
Planner = Callable[[str, MemorySpec, bool, int], Stages]
_PLANNER: list[Planner] = []


def register_planner(planner: Planner) -> None:
    """Install the function that turns ``impl`` (``auto`` / ``pallas`` / ``xla``) into :class:`Stages`."""
    _PLANNER[:] = [planner]


def plan_stages(impl: str, spec: MemorySpec, streaming: bool, head_dim: int) -> Stages:
    """The stage implementations of a call (``head_dim = max(Dk, Dv)``)."""
    if _PLANNER:
        return _PLANNER[0](impl, spec, streaming, head_dim)
    if impl == "pallas":
        raise ValueError("impl='pallas' needs the dispatch layer: import mc_jax (or mc_jax.dispatch) first")
    return XLA_STAGES


def resolve_chunk(spec: MemorySpec, segment_size: int, chunk_size: int | None) -> int:
    """The inner chunk size: it must tile a segment.

    Deep memories take their gradients at chunk starts, so the chunk is part of the model and must divide the
    segment size. For linear memories it is only a speed knob: the largest divisor of the segment size not above
    the request is used.
    """
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}")
    if not spec.family.deep:
        return largest_divisor_at_most(segment_size, chunk_size or spec.family.default_chunk)
    if chunk_size is None:
        return largest_divisor_at_most(segment_size, spec.family.default_chunk)
    if segment_size % chunk_size:
        raise ValueError(
            f"for deep memory {spec.name!r} segment_size ({segment_size}) must be a multiple of chunk_size "
            f"({chunk_size}); change one of them (e.g. chunk_size={largest_divisor_at_most(segment_size, chunk_size)})"
        )
    return chunk_size


def cap_segment_size(segment_size: int, length: int, chunk: int) -> int:
    """The segment size the parallel form uses for a ``length``-token call: at most ``length`` rounded up to whole
    inner chunks. A larger segment holds the whole sequence either way (no cached memory, one online segment), so
    the outputs are the same, but it would pad every sequence to a whole segment (``segment_size=100000`` at
    ``T=64`` cost 1000x more). The result is still a multiple of ``chunk`` (deep memories need it)."""
    return min(segment_size, ceil_div(length, chunk) * chunk)


def _check_arrays(q, k, v, u, aggregation: str = "grm") -> None:
    """``q, k, u [B, T, H, Dk]`` (``token`` gates: ``u [B, T, H, 1]``) and ``v [B, T, H, Dv]``, floating, ``T >= 1``."""
    for name, x in (("q", q), ("k", k), ("v", v)) + ((("u", u),) if u is not None else ()):
        if jnp.ndim(x) != 4:
            raise ValueError(f"{name} must be [B, T, H, D] (token-major); got shape {jnp.shape(x)}")
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(f"{name} must be a floating-point array; got dtype {jnp.result_type(x)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {q.shape}; got {k.shape}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, Dv] with B, T, H = {q.shape[:3]}; got {v.shape}")
    if u is not None and aggregation == "token" and u.shape != q.shape[:3] + (1,):
        raise ValueError(f"aggregation='token' takes u [B, T, H, 1] (each token's logit for its online memory, "
                         f"against 0 for every cached one); got {u.shape}, expected {q.shape[:3] + (1,)}")
    if u is not None and aggregation != "token" and u.shape != q.shape:
        raise ValueError(f"u must have the shape of q {q.shape}; got {u.shape}")
    if q.shape[1] < 1:
        raise ValueError("the sequence is empty (T = 0); pass at least one token")


def _check_settings(aggregation, segmentation, segment_size, top_k, init, pool, impl) -> None:
    """Every static setting is one of its choices; ``top_k`` exactly with ``ssc``."""
    check_choice("aggregation", aggregation, agg.AGGREGATIONS)
    check_choice("segmentation", segmentation, SEGMENTATIONS)
    check_choice("init", init, INITS)
    check_choice("pool", pool, agg.POOLS)
    check_choice("impl", impl, IMPLS)
    check_positive("segment_size", segment_size)
    if aggregation == "ssc":
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"aggregation='ssc' needs top_k >= 1 (cached memories kept per token); got {top_k!r}")
    elif top_k is not None:
        raise ValueError(f"top_k is only used by aggregation='ssc'; drop it or use ssc "
                         f"(got aggregation={aggregation!r})")


def _check_cache(cache: MCCache, expected: CacheConfig, params, shape: tuple[int, int, int, int],
                 checked: bool = False) -> None:
    """A cache passed in must fit this call: same settings, no new params, same [B, H, Dk], room for the tokens
    (concrete positions at once; traced ones with ``checked`` through ``checkify``)."""
    b, t, h, dk = shape
    if cache.config != expected:
        raise ValueError(f"the cache was built for (memory, segmentation, segment_size, init, pool, chunk) = "
                         f"{tuple(cache.config)}, but this call uses {tuple(expected)}")
    if params is not None:
        raise ValueError("params is the initial memory of a new sequence; a call that continues a cache "
                         "takes it from the cache (drop params)")
    keys_shape = jnp.shape(cache.slot_keys)  # b h m dk
    lead = (keys_shape[0], keys_shape[1], keys_shape[3])
    if lead != (b, h, dk):
        raise ValueError(f"the cache holds [B, H, Dk] = {lead}, but q has {(b, h, dk)}")
    if not isinstance(cache.position, jax.core.Tracer):  # under jit: checked=True and checkify
        needed = cache_slots(int(cache.position) + t, expected.segmentation, expected.segment_size)
        if needed > cache.capacity:
            raise ValueError(
                f"the cache has {cache.capacity} slots but {int(cache.position) + t} tokens need {needed}; "
                f"create it with init_cache(..., max_len=<total tokens>) and pass it to the first call")
    elif checked:
        room = cache_token_capacity(cache.capacity, expected.segmentation, expected.segment_size)
        checkify.check(cache.position + t <= room, "cache overflow: {pos} + " + str(t) + f" tokens exceed the "
                       f"cache's {room} tokens ({cache.capacity} slots); create it with "
                       "init_cache(..., max_len=<total tokens>)", pos=cache.position)


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
    checked: bool = False,
):
    """Memory Caching over a base recurrent memory (DESIGN.md section 3).

    Args:
        q, k: queries and keys ``[B, T, H, Dk]``; no scaling or normalisation is applied here.
        v: values ``[B, T, H, Dv]``.
        u: gate / router queries ``[B, T, H, Dk]``; required by ``grm``, ``soup`` and ``ssc``. ``token`` takes
            ``[B, T, H, 1]``: each token's logit for its online memory (every cached memory's logit is 0).
        memory: ``linear``, ``gated_linear``, ``delta``, ``swla``, ``dla`` or ``titans``.
        aggregation: ``residual``, ``grm``, ``soup``, ``ssc``, ``token`` (token-only gates, no segment context) or
            ``uniform`` (``1 / (n + 1)`` for the online memory and each of the ``n`` available cached ones).
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
            :data:`mc_jax.dispatch.AUTO_KERNELS`; XLA on CPU) or ``naive`` (the per-token definition; slow). Where
            no kernel covers a configuration (deep memories, the streaming form) ``pallas`` falls back to XLA with a
            one-time warning. ``auto`` / ``pallas`` are resolved by :mod:`mc_jax.dispatch` (see
            :func:`register_planner`).
        return_cache: also return an :class:`MCCache` to continue from (decoding, or a second call). A call with
            one token and ``impl`` other than ``xla`` takes the decode step (:mod:`mc_jax.ops.decode`).
        cache: continue from this cache (from ``return_cache=True`` or :func:`init_cache`).
        checked: under ``jit`` (traced arrays), add ``jax.experimental.checkify`` checks of what eager calls check
            at once: gates in their ranges (:data:`~mc_jax.ops.memories.GATE_RANGES`) and a cache with room for the
            new tokens (a full cache would silently stop growing). Wrap the jitted function:
            ``err, y = checkify.checkify(jax.jit(f))(...); err.throw()``. Without ``checkify`` a checked call under
            ``jit`` fails to trace (JAX asks for the functionalisation).

    Non-finite values are causal: a NaN or inf in ``k``, ``v``, ``q``, ``u`` or a gate at token ``p`` never reaches
    the outputs of tokens before ``p`` (every form and kernel; later tokens that read it get NaN). A segment size
    above the sequence length is capped at it (rounded up to whole inner chunks) in the parallel form: same outputs,
    the cost of one segment of ``T`` tokens (:func:`cap_segment_size`).

    Returns:
        ``y [B, T, H, Dv]`` in the dtype of ``q``, or ``(y, cache)`` when ``return_cache`` is set.
    """
    spec = get_memory(memory)
    _check_settings(aggregation, segmentation, segment_size, top_k, init, pool, impl)
    _check_arrays(q, k, v, u, aggregation)
    if aggregation in agg.GATED and u is None:
        width = "1" if aggregation == "token" else "Dk"
        raise ValueError(f"aggregation={aggregation!r} needs u [B, T, H, {width}] for its gate / router logits")
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    chunk = resolve_chunk(spec, segment_size, chunk_size)
    given = set(gates or {})
    gates = complete_gates(spec, gates, (b, t, h))
    check_gate_values({name: gates[name] for name in given}, checked=checked)
    kwargs = dict(aggregation=aggregation, segmentation=segmentation, segment_size=segment_size, top_k=top_k,
                  init=init, pool=pool)
    u_used = u if aggregation in agg.GATED else None
    streaming = cache is not None or return_cache
    if impl == "naive":
        if streaming:
            raise ValueError("impl='naive' is the per-token definition without a cache; use impl='xla' for caches")
        state = initial_state(spec, params, b, h, dk, dv)
        return naive_memory_caching(q, k, v, u_used, gates, state, spec, chunk_size=chunk, **kwargs).astype(q.dtype)
    stages = plan_stages(impl, spec, streaming=streaming, head_dim=max(dk, dv))
    if not streaming:
        state = initial_state(spec, params, b, h, dk, dv)
        kwargs["segment_size"] = cap_segment_size(segment_size, t, chunk)
        return _sequence(q, k, v, u_used, gates, state, spec=spec, chunk=chunk, stages=stages, **kwargs).astype(q.dtype)
    config = CacheConfig(spec.name, segmentation, segment_size, init, pool, chunk)
    if cache is None:  # a fresh cache sized for this call; use init_cache to leave room for more tokens
        state = initial_state(spec, params, b, h, dk, dv)
        cache = empty_cache(spec, state, max_len=t, segmentation=segmentation, segment_size=segment_size,
                            init=init, pool=pool, chunk=chunk)
    else:
        _check_cache(cache, config, params, (b, t, h, dk), checked)
    # one token under impl='auto' / 'pallas': the decode step (cost of one token and the filled slots; same results)
    stream = _decode if t == 1 and impl != "xla" else _stream
    y, cache = stream(q, k, v, u_used, gates, cache, spec=spec, chunk=chunk, stages=stages, **kwargs)
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
    check_choice("segmentation", segmentation, SEGMENTATIONS)
    check_choice("init", init, INITS)
    check_choice("pool", pool, agg.POOLS)
    check_positive("segment_size", segment_size)
    check_positive("max_len", max_len)
    chunk = resolve_chunk(spec, segment_size, chunk_size)
    state = initial_state(spec, params, batch, heads, dk, dv)
    return empty_cache(spec, state, max_len=max_len, segmentation=segmentation, segment_size=segment_size,
                       init=init, pool=pool, chunk=chunk)
