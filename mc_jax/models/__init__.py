"""The language model, its pure-function view and generation.

    model = create_model(config)                      # flax.nnx module; model(tokens) -> logits [B, T, V]
    pure, state = PureModel.split(model)              # pure.apply(state, tokens), pure.forward(state, tokens, cache)
    out = generate(pure, state, prompts, lengths=..., max_new_tokens=32, temperature=0.8, top_p=0.95, key=key)
"""

from mc_jax.models.checks import check_tokens
from mc_jax.models.generate import decode, generate, prefill, sample_token
from mc_jax.models.lm import LanguageModel, abstract_model, count_params, create_model, param_summary
from mc_jax.models.pure import PureModel, apply

__all__ = [
    "LanguageModel", "PureModel", "abstract_model", "apply", "check_tokens", "count_params", "create_model", "decode",
    "generate", "param_summary", "prefill", "sample_token",
]
