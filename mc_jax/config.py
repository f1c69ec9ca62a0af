"""Model configuration: frozen, validated dataclasses (DESIGN.md sections 4-5).

``MixerConfig`` holds every token-mixer setting (memory caching, the base memory, attention); ``ModelConfig`` holds
the stack. A hybrid model lists mixer kinds in ``ModelConfig.pattern``, a unit repeated over the layers; every layer
of a kind uses the same ``MixerConfig``. All checks run in ``__post_init__`` and raise ``ValueError`` with the
offending field named, so a config that constructs is a config the model can build.

Mixer kinds:
    mc              memory caching over ``memory`` with ``aggregation`` / ``segmentation`` / ``init``
    none            the base recurrent memory without caching (one segment spanning the whole sequence)
    attention       causal softmax attention with RoPE (Transformer++)
    sliding_window  the same restricted to the last ``window`` tokens (the token itself included)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import jax

from mc_jax.ops import AGGREGATIONS, MEMORIES, SEGMENTATIONS
from mc_jax.ops.aggregation import POOLS
from mc_jax.ops.memory_caching import IMPLS, INITS, resolve_chunk
from mc_jax.ops.utils import ceil_div
from mc_jax.pair_codes import MAX_PAIR_CODES, pair_vocab

MIXER_KINDS = ("mc", "none", "attention", "sliding_window")
RECURRENT_KINDS = ("mc", "none")
ROUTER_INITS = ("normal", "zeros")
# applied to the query / key (and value) projections; q and k are l2-normalised after it
FEATURE_MAPS = {"silu": jax.nn.silu, "identity": lambda x: x, "relu": jax.nn.relu}
DTYPES = ("float32", "bfloat16", "float16")
INPUTS = ("tokens", "pair_table")
# the output gate's activation (y * act(x W_gate + b)) and where it sits relative to the per-head output norm
GATE_ACTIVATIONS = {"silu": jax.nn.silu, "sigmoid": jax.nn.sigmoid}
GATE_POSITIONS = ("after_norm", "before_norm")


def _choice(name: str, value: object, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name}={value!r} is not one of {list(options)}")


def _positive(name: str, value: int | float | None, *, optional: bool = False, integer: bool = True) -> None:
    if value is None and optional:
        return
    kinds = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive {'int' if integer else 'finite number'}; got {value!r}")


def _flag(name: str, value: bool) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")


def is_deep(memory: str) -> bool:
    """Deep (MLP) memories need ``Dk == Dv``, learned initial weights and a semantic inner chunk size."""
    return MEMORIES[memory].family.deep


@dataclass(frozen=True)
class MixerConfig:
    """Token-mixer settings shared by every layer of a kind (see the module docstring for the kinds).

    Attributes:
        kind: default mixer kind of a layer (``ModelConfig.pattern`` may mix kinds).
        memory: base memory, one of ``mc_jax.ops.memories.MEMORIES``.
        aggregation: ``residual`` | ``grm`` | ``soup`` | ``ssc`` (``ssc`` needs ``top_k``) | ``token`` (token-only
            gates: a per-head logit ``x_t w`` for the online memory against 0 for every cached one, no segment
            context) | ``uniform`` (frozen ``1 / (n + 1)``, no router). The last two are the ablations of the
            paper's Table 5 (docs/aggregation_ablations.md).
        segmentation: ``constant`` | ``log``.
        segment_size: tokens per segment (log: the smallest block).
        top_k: cached memories kept per token by ``ssc``; only valid with ``ssc``.
        init: initial state of a segment, ``independent`` | ``checkpoint``.
        pool: how a segment's keys are pooled for the gate logits, ``mean`` | ``sum``.
        router_init: initial weights of the gate query projection ``W_u``: ``normal`` (``init_std``, like every
            projection) or ``zeros`` (every available memory gets the same weight at initialisation; the logits
            still get gradients, ``d logit / d u = pool(K_i)``).
        router_temperature: the gate logits are divided by it, ``<u_t, pool(K_i)> / tau`` (token-only gates too).
            ``tau < 1`` sharpens the gates at initialisation and speeds the logits' learning under Adam (a step of
            ``W_u`` moves a logit ``1 / tau`` as far); ``tau = 1`` is the paper's router.
        chunk_size: inner chunk of the memory. For deep memories it changes the math (gradients are taken at the
            chunk-start weights), so it is fixed here; ``None`` takes the op's default for ``segment_size`` (the
            largest divisor at most 16). Linear memories are exact for any chunk; ``None`` lets the op choose.
        expansion: hidden width factor ``E`` of a deep memory's MLP.
        gates: gate projections the layer feeds the op; ``None`` = all gates the memory accepts (required and
            optional; e.g. ``delta`` gets ``beta`` and ``log_decay``, a gated delta rule).
        key_dim, value_dim: per-head widths ``Dk`` / ``Dv`` of the recurrent mixers; ``None`` = d_model // heads.
        conv_width: width of the causal depthwise convolutions after the q/k/v projections (1: a learned
            per-channel scale, no mixing across positions).
        feature_map: activation of the query and key projections before their l2 normalisation, one of
            ``silu`` (GLA / Gated DeltaNet style, the default), ``identity`` (plain normalised linear attention:
            keys spread over the whole sphere), ``relu``.
        value_map: activation of the value projection, one of the same maps (``silu`` by default; ``identity``
            keeps the sign of every value coordinate, what a recall probe with signed value embeddings needs).
        output_norm: apply the per-head RMSNorm to the memory read (GLA / Gated DeltaNet style).
        output_gate: multiply the read by ``silu(x W_gate + b)`` before the output projection (``b``: see
            ``gate_bias``; without the bias the gate starts near 0 and stalled the cached layer on stacked MQAR:
            docs/recall_experiments.md, docs/results.md).
            ``feature_map=value_map="identity"`` with both of these off (and ``ModelConfig.mlp=False``) is the bare
            normalised linear-attention layer of the tiny recall protocol (``mc_jax/configs/train_tiny_mqar.py``).
        gate_activation: the output gate's activation, ``silu`` (GLA style, the default) or ``sigmoid`` (a gate in
            (0, 1)).
        gate_bias: the gate projection's learned per-channel bias, initialised to this number, so the gate starts
            at ``act(gate_bias)`` instead of ``act(0)`` (silu: 0, sigmoid: 0.5). The default 2.0 starts it open
            (silu 1.76, sigmoid 0.88): in the ``eb`` study (docs/results.md, 3 seeds) the full block with a
            bias-free gate reached 36.5 +- 7.0 % on stacked MQAR, with the gate bias 63.6 +- 0.5 % (the bare layer
            45.1 +- 0.8 %). ``None``: no bias (the earlier default; its checkpoints need ``gate_bias=None``).
        gate_position: ``after_norm`` (the default: ``W_o (norm(y) * gate)``) or ``before_norm`` (``W_o norm(y *
            gate)``: the norm rescales the gated read, so the gate sets each channel's share but cannot shrink
            the whole read; needs ``output_norm``).
        window: attention window (tokens, the query included) of ``sliding_window`` layers.
        rope_theta: RoPE base of the attention layers.
        impl: implementation switch passed to ``memory_caching``.
    """

    kind: str = "mc"
    memory: str = "linear"
    aggregation: str = "grm"
    segmentation: str = "constant"
    segment_size: int = 64
    top_k: int | None = None
    init: str = "independent"
    pool: str = "mean"
    router_init: str = "normal"
    router_temperature: float = 1.0
    chunk_size: int | None = None
    expansion: int = 4
    gates: tuple[str, ...] | None = None
    key_dim: int | None = None
    value_dim: int | None = None
    conv_width: int = 4
    feature_map: str = "silu"
    value_map: str = "silu"
    output_norm: bool = True
    output_gate: bool = True
    gate_activation: str = "silu"
    gate_bias: float | None = 2.0
    gate_position: str = "after_norm"
    window: int | None = None
    rope_theta: float = 10000.0
    impl: str = "auto"

    def __post_init__(self) -> None:
        _choice("mixer.kind", self.kind, MIXER_KINDS)
        _choice("mixer.memory", self.memory, tuple(MEMORIES))
        _choice("mixer.aggregation", self.aggregation, AGGREGATIONS)
        _choice("mixer.segmentation", self.segmentation, SEGMENTATIONS)
        _choice("mixer.init", self.init, INITS)
        _choice("mixer.pool", self.pool, POOLS)
        _choice("mixer.router_init", self.router_init, ROUTER_INITS)
        _choice("mixer.feature_map", self.feature_map, FEATURE_MAPS)
        _choice("mixer.value_map", self.value_map, FEATURE_MAPS)
        _flag("mixer.output_norm", self.output_norm)
        _flag("mixer.output_gate", self.output_gate)
        _choice("mixer.gate_activation", self.gate_activation, tuple(GATE_ACTIVATIONS))
        _choice("mixer.gate_position", self.gate_position, GATE_POSITIONS)
        bias = self.gate_bias
        if bias is not None and (isinstance(bias, bool) or not isinstance(bias, int | float)
                                 or not math.isfinite(bias)):
            raise ValueError(f"mixer.gate_bias must be a finite number or None; got {self.gate_bias!r}")
        if self.gate_position == "before_norm" and not self.output_norm:
            raise ValueError("mixer.gate_position='before_norm' puts the output gate before the per-head output norm; "
                             "it needs mixer.output_norm=true (without the norm both positions are the same layer)")
        _choice("mixer.impl", self.impl, IMPLS)
        for name in ("segment_size", "expansion", "conv_width"):
            _positive(f"mixer.{name}", getattr(self, name))
        for name in ("rope_theta", "router_temperature"):
            _positive(f"mixer.{name}", getattr(self, name), integer=False)
        for name in ("chunk_size", "key_dim", "value_dim", "window"):
            _positive(f"mixer.{name}", getattr(self, name), optional=True)
        if self.aggregation == "ssc" and self.top_k is None:
            raise ValueError("mixer.aggregation='ssc' needs mixer.top_k (cached memories kept per token)")
        if self.top_k is not None and self.aggregation != "ssc":
            raise ValueError(f"mixer.top_k is only used by aggregation='ssc'; got aggregation={self.aggregation!r}")
        _positive("mixer.top_k", self.top_k, optional=True)
        if self.kind == "sliding_window" and self.window is None:
            raise ValueError("mixer.kind='sliding_window' needs mixer.window")
        if self.kind == "mc":
            self.check_segments()
        if self.gates is not None:
            spec = MEMORIES[self.memory]
            unknown = sorted(set(self.gates) - set(spec.gate_names))
            if unknown:
                raise ValueError(f"mixer.gates {unknown} are not gates of memory {self.memory!r}: {spec.gate_names}")
            missing = [g for g in spec.required_gates if g not in self.gates]
            if missing:
                raise ValueError(f"memory {self.memory!r} needs gates {missing} in mixer.gates")
            if len(set(self.gates)) != len(self.gates):
                raise ValueError(f"mixer.gates has duplicates: {self.gates}")

    def check_segments(self) -> None:
        """Checks that only matter where segments are cached (``mc`` layers; ``none`` uses one segment)."""
        if is_deep(self.memory) and self.chunk_size is not None and self.segment_size % self.chunk_size:
            raise ValueError(
                f"deep memory {self.memory!r}: mixer.segment_size={self.segment_size} must be a multiple of "
                f"mixer.chunk_size={self.chunk_size} (segments are whole inner chunks)"
            )

    @property
    def gate_names(self) -> tuple[str, ...]:
        """Gates the layer projects (in a fixed order)."""
        return MEMORIES[self.memory].gate_names if self.gates is None else tuple(self.gates)

    @property
    def deep(self) -> bool:
        return is_deep(self.memory)

    @property
    def inner_chunk(self) -> int | None:
        """The inner chunk passed to the op: fixed for deep memories, ``chunk_size`` (maybe ``None``) otherwise."""
        if self.chunk_size is not None or not self.deep:
            return self.chunk_size
        return resolve_chunk(MEMORIES[self.memory], self.segment_size, None)  # the op's default for deep memories


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only LM: embedding, ``num_layers`` pre-norm blocks (mixer + SwiGLU MLP), final norm, LM head.

    Attributes:
        vocab_size, d_model, num_layers, num_heads: the usual shapes.
        mlp: give every block its SwiGLU MLP sub-layer (``False``: blocks are ``x + mixer(norm(x))`` only).
        mlp_hidden: SwiGLU hidden width; ``None`` = 8/3 d_model rounded up to ``mlp_multiple_of``.
        mixer: settings of every token mixer.
        pattern: mixer kinds of one repeating unit of layers, e.g. ``("mc", "mc", "attention")``; ``()`` means
            ``(mixer.kind,)``. ``num_layers`` must be a multiple of its length. The unit is what ``scan_layers``
            compiles once.
        tie_embeddings: share the embedding with the LM head.
        dtype: compute dtype (activations, matmuls); params stay ``param_dtype`` and recurrent states float32.
        scan_layers: stack the layer units and run them with ``jax.lax.scan`` (one compilation of the unit).
        remat: rematerialise each unit in the backward pass (``jax.checkpoint``).
        inputs: ``tokens`` (a learned embedding and LM head over ``vocab_size`` ids) or ``pair_table`` (stacked
            MQAR, :mod:`mc_jax.layers.pair_table`): inputs are (key, value) pair codes embedded through frozen
            unit-norm tables of ``num_keys`` keys and ``vocab_size`` values, logits are dot products with the
            value table, so ``vocab_size`` counts values.
        num_keys: ``pair_table`` only: rows of the frozen key table.
        table_seed: ``pair_table`` only: seed of the frozen tables.
    """

    vocab_size: int = 32000
    d_model: int = 512
    num_layers: int = 4
    num_heads: int = 8
    mlp: bool = True
    mlp_hidden: int | None = None
    mlp_multiple_of: int = 64
    mixer: MixerConfig = field(default_factory=MixerConfig)
    pattern: tuple[str, ...] = ()
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    init_std: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat: bool = False
    inputs: str = "tokens"
    num_keys: int = 1024
    table_seed: int = 0

    def __post_init__(self) -> None:
        _choice("inputs", self.inputs, INPUTS)
        if isinstance(self.table_seed, bool) or not isinstance(self.table_seed, int) or self.table_seed < 0:
            raise ValueError(f"table_seed must be a non-negative int; got {self.table_seed!r}")
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_multiple_of", "num_keys"):
            _positive(name, getattr(self, name))
        for name in ("norm_eps", "init_std"):
            _positive(name, getattr(self, name), integer=False)
        _positive("mlp_hidden", self.mlp_hidden, optional=True)
        _flag("mlp", self.mlp)
        _choice("dtype", self.dtype, DTYPES)
        _choice("param_dtype", self.param_dtype, DTYPES)
        if not isinstance(self.mixer, MixerConfig):
            raise ValueError(f"mixer must be a MixerConfig; got {type(self.mixer).__name__}")
        for kind in self.pattern:
            _choice("pattern entry", kind, MIXER_KINDS)
        if "mc" in self.layer_pattern:
            self.mixer.check_segments()
        if "sliding_window" in self.layer_pattern and self.mixer.window is None:
            raise ValueError("a 'sliding_window' layer in the pattern needs mixer.window")
        if self.num_layers % len(self.layer_pattern):
            raise ValueError(f"num_layers={self.num_layers} is not a multiple of len(pattern)={len(self.pattern)}")
        if self.mixer.key_dim is None or self.mixer.value_dim is None or self.has_attention:
            if self.d_model % self.num_heads:
                raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if self.has_recurrent and self.mixer.deep and self.key_dim != self.value_dim:
            raise ValueError(
                f"deep memory {self.mixer.memory!r} needs key_dim == value_dim; got {self.key_dim} and {self.value_dim}"
            )
        if self.inputs == "pair_table" and self.input_vocab > MAX_PAIR_CODES:
            raise ValueError(f"inputs='pair_table': num_keys * (vocab_size + 1) = {self.input_vocab} pair codes do not "
                             "fit in int32; use smaller tables (num_keys, vocab_size)")
        if self.has_attention and (self.d_model // self.num_heads) % 2:
            raise ValueError(f"attention head dim {self.d_model // self.num_heads} must be even for RoPE")

    @property
    def input_vocab(self) -> int:
        """Distinct input ids: ``vocab_size`` tokens, or ``num_keys * (vocab_size + 1)`` pair codes."""
        return self.vocab_size if self.inputs == "tokens" else pair_vocab(self.num_keys, self.vocab_size)

    @property
    def layer_pattern(self) -> tuple[str, ...]:
        return self.pattern or (self.mixer.kind,)

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """The mixer kind of every layer."""
        return self.layer_pattern * (self.num_layers // len(self.layer_pattern))

    @property
    def num_units(self) -> int:
        """Repetitions of the pattern (the length of the layer scan)."""
        return self.num_layers // len(self.layer_pattern)

    @property
    def has_recurrent(self) -> bool:
        return any(k in RECURRENT_KINDS for k in self.layer_pattern)

    @property
    def has_attention(self) -> bool:
        return any(k not in RECURRENT_KINDS for k in self.layer_pattern)

    @property
    def head_dim(self) -> int:
        """Attention head width."""
        return self.d_model // self.num_heads

    @property
    def key_dim(self) -> int:
        return self.mixer.key_dim or self.d_model // self.num_heads

    @property
    def value_dim(self) -> int:
        return self.mixer.value_dim or self.d_model // self.num_heads

    @property
    def hidden_dim(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        m = self.mlp_multiple_of
        return m * ceil_div(8 * self.d_model // 3, m)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


__all__ = ["DTYPES", "FEATURE_MAPS", "GATE_ACTIVATIONS", "GATE_POSITIONS",
           "INPUTS", "MIXER_KINDS", "MixerConfig", "ModelConfig", "RECURRENT_KINDS",
           "is_deep"]
