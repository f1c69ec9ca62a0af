"""Thin flax.nnx modules: projections, short convolutions, norms, RoPE attention and the MC mixer.

The math of Memory Caching lives in :mod:`mc_jax.ops`; these layers project, normalise and plumb parameters.
"""

from mc_jax.layers.attention import Attention, KVCache
from mc_jax.layers.block import MIXERS, Block, Unit, make_mixer
from mc_jax.layers.conv import ShortConv
from mc_jax.layers.gates import GATES, Gates
from mc_jax.layers.mc_mixer import MCMixer, MCMixerCache
from mc_jax.layers.mlp import SwiGLU
from mc_jax.layers.norms import RMSNorm, l2_normalize
from mc_jax.layers.rope import apply_rope

__all__ = [
    "GATES", "MIXERS", "Attention", "Block", "Gates", "KVCache", "MCMixer", "MCMixerCache", "RMSNorm", "ShortConv",
    "SwiGLU", "Unit", "apply_rope", "l2_normalize", "make_mixer",
]
