"""mc_jax: Memory Caching (RNNs with growing memory) in JAX.

The math lives in :mod:`mc_jax.ops` as pure functions; see ``mc_jax.ops.memory_caching``. For notebooks, one line
gives the model, training and evaluation entry points (imported on first use, so ``import mc_jax`` stays light)::

    from mc_jax import (ModelConfig, MixerConfig, create_model, PureModel, generate, load_checkpoint,
                        ByteTokenizer, BPETokenizer, load_tokenizer, mean_loss, token_stats)

* :func:`create_model` builds a ``flax.nnx`` language model from a :class:`ModelConfig`;
  :class:`PureModel` splits it into pure functions of a parameter pytree (``pure.apply(state, tokens)``).
* :func:`generate` prefills prompts and decodes token by token (greedy, temperature, top-p).
* :func:`load_checkpoint` loads a run written by ``mc-train`` (``run.pure``, ``run.state``, ``run.tokenizer``).
* :class:`ByteTokenizer` / :class:`BPETokenizer` / :func:`load_tokenizer` turn text into token ids and back.
* :func:`mean_loss` is the training loss (mean next-token cross-entropy); :func:`token_stats` its sums.
"""

from mc_jax import _xla_cpu

_xla_cpu.apply()  # before anything creates JAX's CPU backend (an XLA:CPU miscompilation in jaxlib 0.10)

# dispatch installs the impl planner of ops.memory_caching (kernels, the auto policy)
from mc_jax import dispatch, ops  # noqa: E402,F401
from mc_jax.ops import memory_caching  # noqa: E402

_LAZY = {  # public name -> module that defines it (imported on first access)
    "ModelConfig": "mc_jax.config",
    "MixerConfig": "mc_jax.config",
    "create_model": "mc_jax.models",
    "PureModel": "mc_jax.models",
    "generate": "mc_jax.models",
    "load_checkpoint": "mc_jax.eval.load",
    "ByteTokenizer": "mc_jax.data.tokenizer",
    "BPETokenizer": "mc_jax.data.tokenizer",
    "load_tokenizer": "mc_jax.data.tokenizer",
    "mean_loss": "mc_jax.models.loss",
    "token_stats": "mc_jax.models.loss",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mc_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [  # noqa: RUF022 (the order of the module docstring)
    "memory_caching", "ops", "ModelConfig", "MixerConfig", "create_model", "PureModel", "generate", "load_checkpoint",
    "ByteTokenizer", "BPETokenizer", "load_tokenizer", "mean_loss", "token_stats",
]
assert set(__all__) == {"memory_caching", "ops", *_LAZY}
__version__ = "0.1.0"
