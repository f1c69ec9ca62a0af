"""Memory Caching over the linear memory in PyTorch: the vectorised code a researcher would write (issue 15).

The same equations as ``mc_jax.ops.memory_caching(..., memory="linear", segmentation="constant")`` (DESIGN.md
section 3, ``mc_jax/ops/naive.py``), for ``aggregation`` ``grm`` / ``residual`` and ``init``
``independent`` / ``checkpoint``, written as a user would write them in torch (no loop over tokens or segments):

* segment ``i = [i C, (i + 1) C)``; its state ``S_i = S0 + sum_{j in i} k_j v_j^T`` (``independent``) or the running
  state at its end ``S0 + sum_{j < (i + 1) C} k_j v_j^T`` (``checkpoint``: a cumulative sum of the per-segment outer
  products);
* token ``t`` of segment ``c`` reads the cached states ``i < c`` (``q_t^T S_i``) and its online memory: the masked
  intra-segment attention ``sum_{cC <= j <= t} (q_t . k_j) v_j`` plus ``q_t^T S0`` (``independent``) or plus the
  running state before its segment (``checkpoint``);
* ``residual``: the plain sum of those reads; ``grm``: weights ``softmax([<u_t, pool(K_on)>, <u_t, pool(K_i)>]_{i<c})``
  where ``pool`` is the mean (or sum) of a segment's keys and ``K_on`` the keys of the current segment up to ``t``.

A ragged last segment is padded with zero tokens: a padded token only changes states no real token reads.
Tensors are token-major as in mc_jax: ``q, k, u [B, T, H, Dk]``, ``v [B, T, H, Dv]``, ``s0 [B, H, Dk, Dv]``.
Needs the optional extra ``pip install -e '.[torch]'``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.jax_reference import AGGREGATIONS, INITS, POOLS  # the one home of the choices


def _check(q, k, v, u, aggregation, segment_size, init, pool) -> None:
    for name, value, choices in (("aggregation", aggregation, AGGREGATIONS), ("init", init, INITS),
                                 ("pool", pool, POOLS)):
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices} in the torch reference; got {value!r}")
    if not isinstance(segment_size, int) or segment_size < 1:
        raise ValueError(f"segment_size must be a positive int; got {segment_size!r}")
    if q.ndim != 4 or k.shape != q.shape or v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"expected q, k [B, T, H, Dk] and v [B, T, H, Dv]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if aggregation == "grm" and (u is None or u.shape != q.shape):
        raise ValueError(f"aggregation='grm' needs u with the shape of q {tuple(q.shape)}; "
                         f"got {None if u is None else tuple(u.shape)}")


def _segments(x: torch.Tensor, c: int) -> torch.Tensor:
    """``[B, T, H, D] -> [B, N, C, H, D]``, zero-padding the last segment."""
    b, t, h, d = x.shape
    n = -(-t // c)
    return F.pad(x, (0, 0, 0, 0, 0, n * c - t)).reshape(b, n, c, h, d)


def memory_caching_linear(q, k, v, u=None, *, aggregation="grm", segment_size=64, init="independent", pool="mean",
                          s0=None) -> torch.Tensor:
    """MC over the linear memory (see the module docstring); returns ``y [B, T, H, Dv]``."""
    _check(q, k, v, u, aggregation, segment_size, init, pool)
    length, c = q.shape[1], segment_size
    qs, ks, vs = _segments(q, c), _segments(k, c), _segments(v, c)  # b n c h d
    n = qs.shape[1]
    seg_states = torch.einsum("bnchk,bnchv->bnhkv", ks, vs)  # each segment's own sum of outer products
    if s0 is None:
        s0 = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    if init == "independent":
        cached, before = seg_states + s0[:, None], s0[:, None].expand_as(seg_states)
    else:
        cached = s0[:, None] + torch.cumsum(seg_states, dim=1)  # the running state at the end of each segment
        before = torch.cat([s0[:, None], cached[:, :-1]], dim=1)  # ... and before it
    # online read: the state the segment starts from + masked intra-segment attention
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    scores = torch.einsum("bnchk,bndhk->bnhcd", qs, ks).masked_fill(~causal, 0.0)
    y_on = torch.einsum("bnhcd,bndhv->bnchv", scores, vs) + torch.einsum("bnchk,bnhkv->bnchv", qs, before)
    visible = torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-1)  # segment n reads cached i < n
    if aggregation == "residual":  # sum of the visible cached reads = a read of the sum of the visible states
        cached_sum = torch.einsum("ni,bihkv->bnhkv", visible.to(q.dtype), cached)
        y = y_on + torch.einsum("bnchk,bnhkv->bnchv", qs, cached_sum)
    else:
        us = _segments(u, c)
        counts = torch.arange(1, c + 1, dtype=q.dtype, device=q.device)[:, None, None]
        key_on = torch.cumsum(ks, dim=2) / (counts if pool == "mean" else 1.0)  # b n c h dk: prefix up to t
        key_cached = ks.sum(dim=2) / (c if pool == "mean" else 1.0)  # b n h dk
        logit_on = torch.einsum("bnchk,bnchk->bnch", us, key_on)
        logits = torch.einsum("bnchk,bihk->bnchi", us, key_cached)
        logits = logits.masked_fill(~visible[None, :, None, None, :], float("-inf"))
        gamma = torch.softmax(torch.cat([logit_on[..., None], logits], dim=-1), dim=-1)  # b n c h (1 + N)
        reads = torch.einsum("bnchk,bihkv->bnchiv", qs, cached)  # every token against every segment's state
        y = gamma[..., 0, None] * y_on + torch.einsum("bnchi,bnchiv->bnchv", gamma[..., 1:], reads)
    return y.reshape(q.shape[0], n * c, q.shape[2], v.shape[3])[:, :length]
