"""The Memory Caching token mixer (DESIGN.md section 4) and the base recurrent layer (kind ``none``).

    q, k, v = conv4(phi(x W_q)), conv4(phi(x W_k)), conv4(psi(x W_v))       (causal depthwise convolutions)
    (phi = mixer.feature_map, psi = mixer.value_map, silu by default)
    q, k    = l2-normalised per head;  u = x W_u (grm / soup / ssc: Dk wide; token: 1);  gates = act(x W_g + b_g)
    y       = memory_caching(q, k, v, u, gates, params=W_0)                 (mc_jax.ops; no math here)
    out     = W_o (RMSNorm_head(y) * silu(x W_gate))      (norm: mixer.output_norm, gate: mixer.output_gate)
              (the gate: mixer.gate_activation, an optional learned bias mixer.gate_bias, and mixer.gate_position
              = before_norm: W_o RMSNorm_head(y * gate))

Kind ``none`` is the same layer reading one memory: one segment spanning the whole sequence (``residual``, nothing
cached). Its segment size is the sequence length (or the cache capacity when decoding) rounded up to the inner
chunk, so the forward pass and a cache of any capacity run the same memory.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from flax import nnx

from mc_jax.config import FEATURE_MAPS, GATE_ACTIVATIONS, ModelConfig
from mc_jax.layers.conv import ShortConv
from mc_jax.layers.gates import Gates
from mc_jax.layers.mlp import dense
from mc_jax.layers.norms import RMSNorm, l2_normalize
from mc_jax.ops import MCCache, init_cache, memory_caching
from mc_jax.ops.aggregation import GATED
from mc_jax.ops.utils import ceil_div
from mc_jax.parallel.shard_op import sharded_memory_caching
from mc_jax.typing import Array, Float

LINEAR_BASE_CHUNK = 64  # inner chunk of a `none` layer over a linear memory (speed only; exact for any chunk)


class MCMixerCache(NamedTuple):
    """Decoding state of an MC / base layer: the three convolution states ``[b, w - 1, h * d]`` and the op's cache."""

    conv_q: Float[Array, "b w1 hk"]
    conv_k: Float[Array, "b w1 hk"]
    conv_v: Float[Array, "b w1 hv"]
    memory: MCCache


def _round_up(n: int, m: int) -> int:
    return ceil_div(n, m) * m


class MCMixer(nnx.Module):
    """MC mixer (``kind="mc"``) or its base memory without caching (``kind="none"``); see the module docstring."""

    def __init__(self, config: ModelConfig, kind: str, *, rngs: nnx.Rngs):
        if kind not in ("mc", "none"):
            raise ValueError(f"MCMixer kind must be 'mc' or 'none'; got {kind!r}")
        m = config.mixer
        self.kind = kind
        self.settings = m
        self.heads, self.dk, self.dv = config.num_heads, config.key_dim, config.value_dim
        d, h, dk, dv = config.d_model, self.heads, self.dk, self.dv
        dtype, pdtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        self.dtype = dtype
        std, out_std = config.init_std, config.init_std / (2 * config.num_layers) ** 0.5
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=pdtype)
        self.q_proj = dense(d, h * dk, std=std, **kw)
        self.k_proj = dense(d, h * dk, std=std, **kw)
        self.v_proj = dense(d, h * dv, std=std, **kw)
        self.q_conv = ShortConv(h * dk, m.conv_width, **kw)
        self.k_conv = ShortConv(h * dk, m.conv_width, **kw)
        self.v_conv = ShortConv(h * dv, m.conv_width, **kw)
        u_std = std if m.router_init == "normal" else 0.0  # zeros: uniform gates at initialisation
        # content routers (grm / soup / ssc) are Dk wide; token-only gates one logit per head; residual, uniform none
        self.u_width = 1 if self.aggregation == "token" else dk
        self.u_proj = dense(d, h * self.u_width, std=u_std, **kw) if self.aggregation in GATED else None
        self.gates = Gates(d, h, m.gate_names, rngs=rngs, std=std, param_dtype=pdtype, memory=m.memory,
                           head_dim=max(dk, dv))
        self.out_norm = (RMSNorm((h, dv), eps=config.norm_eps, dtype=dtype, param_dtype=pdtype)
                         if m.output_norm else None)
        self.gate_proj = dense(d, h * dv, std=std, bias=m.gate_bias is not None, **kw) if m.output_gate else None
        if self.gate_proj is not None and m.gate_bias is not None:  # starts at act(gate_bias)
            self.gate_proj.bias[...] = jnp.full((h * dv,), m.gate_bias, pdtype)
        self.o_proj = dense(h * dv, d, std=out_std, **kw)
        if m.deep:  # learned initial MLP weights W_0, M(x) = x + W1 gelu(W2 x) (W2 maps D -> E*D)
            f = m.expansion * dk
            self.W1 = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (h, dk, f), pdtype))
            self.W2 = nnx.Param(nnx.initializers.normal(dk**-0.5)(rngs.params(), (h, f, dk), pdtype))

    # ---- static op settings ------------------------------------------------------------------------------------
    @property
    def aggregation(self) -> str:
        return self.settings.aggregation if self.kind == "mc" else "residual"

    @property
    def chunk(self) -> int | None:
        if self.kind == "mc":
            return self.settings.inner_chunk
        return self.settings.inner_chunk or LINEAR_BASE_CHUNK

    def segment_size(self, length: int) -> int:
        """Segment size for sequences up to ``length`` tokens (``none``: one segment covering them)."""
        return self.settings.segment_size if self.kind == "mc" else _round_up(length, self.chunk)

    def _op_settings(self, segment_size: int) -> dict:
        m, mc = self.settings, self.kind == "mc"
        return dict(
            memory=m.memory, segmentation=m.segmentation if mc else "constant", segment_size=segment_size,
            init=m.init if mc else "independent", pool=m.pool, chunk_size=self.chunk,
        )

    def memory_params(self) -> dict[str, Array] | None:
        """The op's ``params``: learned initial weights of a deep memory (float32), ``None`` for linear ones."""
        if not self.settings.deep:
            return None
        return {"W1": self.W1[...], "W2": self.W2[...]}

    # ---- decoding state ----------------------------------------------------------------------------------------
    def init_cache(self, batch: int, max_len: int) -> MCMixerCache:
        """An empty decoding state with room for ``max_len`` tokens."""
        memory = init_cache(batch, self.heads, self.dk, self.dv, max_len=max_len, params=self.memory_params(),
                            **self._op_settings(self.segment_size(max_len)))
        return MCMixerCache(self.q_conv.init_state(batch, self.dtype), self.k_conv.init_state(batch, self.dtype),
                            self.v_conv.init_state(batch, self.dtype), memory)

    # ---- forward -----------------------------------------------------------------------------------------------
    def __call__(
        self, x: Float[Array, "b t d"], cache: MCMixerCache | None = None
    ) -> tuple[Float[Array, "b t d"], MCMixerCache | None]:
        """Mix ``x``; with ``cache``, continue from it and return the updated cache (else ``None``)."""
        b, t, _ = x.shape
        heads = lambda y, dim: y.reshape(b, t, self.heads, dim)
        states = (None, None, None) if cache is None else cache[:3]
        phi = FEATURE_MAPS[self.settings.feature_map]
        q, sq = self.q_conv(phi(self.q_proj(x)), states[0])
        k, sk = self.k_conv(phi(self.k_proj(x)), states[1])
        v, sv = self.v_conv(FEATURE_MAPS[self.settings.value_map](self.v_proj(x)), states[2])
        q, k, v = l2_normalize(heads(q, self.dk)), l2_normalize(heads(k, self.dk)), heads(v, self.dv)
        u = None if self.u_proj is None else heads(self.u_proj(x), self.u_width)
        if u is not None and self.settings.router_temperature != 1.0:
            u = u / self.settings.router_temperature  # logits <u, pool(K)> / tau
        top_k = self.settings.top_k if self.aggregation == "ssc" else None
        common = dict(u=u, aggregation=self.aggregation, top_k=top_k, gates=self.gates(x), impl=self.settings.impl)
        if cache is None:
            settings = self._op_settings(self.segment_size(t))
            # per (batch, head) shard under a multi-device mesh (shard_map); the plain op otherwise
            y = sharded_memory_caching(q, k, v, params=self.memory_params(), **common, **settings)
            new_cache = None
        else:  # the segment size the cache was built with (for `none` it follows max_len)
            settings = self._op_settings(cache.memory.config.segment_size)
            y, memory = memory_caching(q, k, v, cache=cache.memory, return_cache=True, **common, **settings)
            new_cache = MCMixerCache(sq, sk, sv, memory)
        return self.o_proj(self._output(x, y)), new_cache

    def _output(self, x: Float[Array, "b t d"], y: Float[Array, "b t h dv"]) -> Float[Array, "b t hv"]:
        """The read through the per-head norm and the output gate, in ``mixer.gate_position`` order."""
        b, t = x.shape[:2]
        gate = None
        if self.gate_proj is not None:
            gate = GATE_ACTIVATIONS[self.settings.gate_activation](self.gate_proj(x)).reshape(y.shape)
        if gate is not None and self.settings.gate_position == "before_norm":
            y = y * gate
        if self.out_norm is not None:
            y = self.out_norm(y)
        if gate is not None and self.settings.gate_position == "after_norm":
            y = y * gate
        return y.reshape(b, t, self.heads * self.dv)
