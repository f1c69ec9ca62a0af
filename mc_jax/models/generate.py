"""Autoregressive generation with recurrent / KV caches: ``prefill`` a prompt, then ``decode`` token by token.

Every step is one fixed-shape call on a fixed-capacity cache (per layer: the MC cache and the short-convolution
states, or a KV ring buffer), so a step costs the same whatever the number of tokens generated.

Batches of prompts of different lengths use **per-row lengths, right padding**: ``prompts [B, P]`` holds row ``b``'s
prompt in ``prompts[b, :lengths[b]]`` (anything after it is ignored). All rows advance in lockstep from position 0;
the batch is prefilled over the shortest prompt, and while a row still has prompt tokens left, decoding feeds it
its next prompt token instead of a sample (the LLaMA reference loop). No padding ever enters a recurrent memory,
so every row is computed exactly as if it were alone; the price is that prompt tokens beyond the shortest prompt
are processed one at a time.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from mc_jax.models.checks import check_tokens, is_concrete
from mc_jax.models.lm import Cache
from mc_jax.models.pure import PureModel
from mc_jax.typing import Array, Float, Int, PyTree


# ---- sampling ------------------------------------------------------------------------------------------------------
def sample_token(
    logits: Float[Array, "b v"], key: Array | None, *, temperature: float | Array = 0.0, top_p: float | Array = 1.0
) -> Int[Array, " b"]:
    """Greedy (``temperature == 0``) or temperature sampling restricted to the top-p nucleus.

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p`` (the most likely
    token is always in it). ``temperature`` and ``top_p`` may be traced scalars, so one compiled generation loop
    serves every sampling setting.
    """
    concrete = all(is_concrete(x) for x in (temperature, top_p))
    if concrete and (float(temperature) < 0 or not 0 < float(top_p) <= 1):
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1; got {temperature}, {top_p}")
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if concrete and float(temperature) == 0:
        return greedy
    logits = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
    threshold = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    sampled = jax.random.categorical(key, jnp.where(logits >= threshold, logits, -jnp.inf), axis=-1)
    return jnp.where(temperature > 0, sampled.astype(jnp.int32), greedy)


# ---- prefill / decode ----------------------------------------------------------------------------------------------
@partial(jax.jit, static_argnums=(0, 4))
def _prefill(pure: PureModel, state: PyTree, tokens, cache, all_logits: bool):
    h, cache = pure.hidden(state, tokens, cache)
    return pure.logits(state, h if all_logits else h[:, -1]), cache


def prefill(
    pure: PureModel, state: PyTree, tokens: Int[Array, "b t"], cache: Cache, *, all_logits: bool = False
) -> tuple[Float[Array, "b v"] | Float[Array, "b t v"], Cache]:
    """Feed a prompt (or any block of tokens) to ``cache``: the logits of the last token (``[B, V]``, or of every
    token ``[B, T, V]`` with ``all_logits``) and the updated cache. Jitted; checks the ids when concrete."""
    check_tokens(tokens, pure.config.input_vocab)
    return _prefill(pure, state, tokens, cache, all_logits)


@partial(jax.jit, static_argnums=0)
def _decode(pure: PureModel, state: PyTree, token, cache):
    logits, cache = pure.forward(state, token[:, None], cache)
    return logits[:, 0], cache


def decode(pure: PureModel, state: PyTree, token: Int[Array, " b"], cache: Cache) -> tuple[Float[Array, "b v"], Cache]:
    """One decoding step: feed ``token [B]``; logits of the next token ``[B, V]`` and the updated cache.

    The caller keeps the total number of tokens within the ``max_len`` the cache was made for (beyond it an MC
    cache stops adding segments and a full-attention ring buffer overwrites its oldest entries).
    """
    if jnp.ndim(token) != 1:
        raise ValueError(f"decode takes one token per row, shape [B]; got shape {jnp.shape(token)}")
    check_tokens(jnp.asarray(token)[:, None] if is_concrete(token) else token[:, None], pure.config.input_vocab,
                 name="token")
    return _decode(pure, state, token, cache)


# ---- the generation loop -------------------------------------------------------------------------------------------
@partial(jax.jit, static_argnames=("pure", "min_len", "total", "max_new_tokens"))
def _generate(pure, state, prompts, lengths, key, eos_id, pad_id, temperature, top_p, *, min_len, total,
              max_new_tokens):
    batch = prompts.shape[0]
    cache = pure.init_cache(state, batch, total)
    h, cache = pure.hidden(state, prompts[:, :min_len], cache)
    logits = pure.logits(state, h[:, -1])

    def step(carry, position):
        logits, cache, key, done = carry
        key, sub = jax.random.split(key)
        sampled = sample_token(logits, sub, temperature=temperature, top_p=top_p)
        in_prompt = position < lengths
        stopped = done | (position >= lengths + max_new_tokens)
        token = jnp.where(in_prompt, prompts[:, position], jnp.where(stopped, pad_id, sampled))
        done = done | (~in_prompt & (token == eos_id))  # eos_id = -1: no stop token
        h, cache = pure.hidden(state, token[:, None], cache)
        return (pure.logits(state, h[:, 0]), cache, key, done), token

    init = (logits, cache, key, jnp.zeros((batch,), bool))
    _, tokens = jax.lax.scan(step, init, jnp.arange(min_len, total, dtype=jnp.int32))
    return jnp.concatenate([prompts[:, :min_len], tokens.T], axis=1)


def generate(
    pure: PureModel,
    state: PyTree,
    prompts: Int[Array, "b p"],
    *,
    max_new_tokens: int,
    lengths: Int[Array, " b"] | None = None,
    key: Array | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> Int[Array, "b n"]:
    """Generate ``max_new_tokens`` tokens after each prompt.

    Args:
        prompts: right-padded prompts ``[B, P]``; row ``b``'s prompt is ``prompts[b, :lengths[b]]``.
        lengths: prompt lengths ``[B]`` (host values, ``1 <= lengths <= P``); ``None`` = all ``P``.
        key: PRNG key, required when ``temperature > 0``.
        temperature: 0 is greedy; otherwise logits are divided by it and sampled (within the top-p nucleus).
        eos_id: a row stops after generating it (the rest of the row is ``pad_id``).

    Returns:
        ``[B, max(lengths) + max_new_tokens]`` int32: row ``b`` is its prompt, its ``max_new_tokens`` generated
        tokens, then ``pad_id``.
    """
    if pure.config.inputs != "tokens":
        raise ValueError(f"generate feeds each predicted token back as the next input; this model reads (key, value) "
                         f"pair codes and predicts values (model.inputs={pure.config.inputs!r}), so there is nothing "
                         "to generate: use prefill/decode to stream pairs through it")
    prompts = jnp.asarray(prompts)
    check_tokens(jnp.zeros(prompts.shape, prompts.dtype), pure.config.vocab_size, name="prompts")  # shape, dtype
    b, p = prompts.shape
    lengths = np.full((b,), p) if lengths is None else np.asarray(lengths)
    if lengths.shape != (b,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be integers of shape [B] = ({b},); got {lengths.dtype}{list(lengths.shape)}")
    if lengths.min() < 1 or lengths.max() > p:
        raise ValueError(f"lengths must lie in [1, {p}] (the padded prompt width); got {lengths.tolist()}")
    if is_concrete(prompts):  # the ids of the prompts proper (the padding is ignored)
        real = np.arange(p)[None, :] < lengths[:, None]
        check_tokens(np.where(real, np.asarray(prompts), 0), pure.config.vocab_size, name="prompts")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int; got {max_new_tokens!r}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1; got {temperature}, {top_p}")
    if temperature > 0 and key is None:
        raise ValueError("sampling with temperature > 0 needs a PRNG key")
    for name, value in (("pad_id", pad_id), ("eos_id", eos_id)):
        if value is not None and not 0 <= value < pure.config.vocab_size:
            raise ValueError(f"{name}={value} is outside the vocabulary [0, {pure.config.vocab_size})")
    min_len, total = int(lengths.min()), int(lengths.max()) + max_new_tokens
    prompts = jnp.pad(prompts[:, : int(lengths.max())], ((0, 0), (0, max_new_tokens)), constant_values=pad_id)
    return _generate(
        pure, state, prompts.astype(jnp.int32), jnp.asarray(lengths, jnp.int32),
        jax.random.key(0) if key is None else key, jnp.int32(-1 if eos_id is None else eos_id), jnp.int32(pad_id),
        jnp.float32(temperature), jnp.float32(top_p), min_len=min_len, total=total, max_new_tokens=max_new_tokens,
    )
