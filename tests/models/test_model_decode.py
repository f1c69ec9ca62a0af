"""Every mixer kind: prefill + token-by-token decoding reproduces the full forward pass, and the gradients at
initialisation are finite.

The prompt (7 tokens) ends mid-segment and decoding crosses several segment boundaries (segments of 2-4 tokens,
20 tokens in all; titans-grm also has two inner chunks per segment). Compile time dominates on a CPU, so each configuration is one jit (forward with gradients,
prefill, and a ``lax.scan`` of single-token decode steps), shared by the tests through a cache.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from model_helpers import tiny, tokens

from mc_jax.models.generate import decode, prefill
from mc_jax.models.pure import PureModel

PROMPT, TOTAL = 7, 20
CASES = {
    # every memory with grm (and, riding along, log segmentation and checkpoint init)
    "linear-grm": dict(memory="linear", segment_size=4),
    "gated_linear-grm-checkpoint": dict(memory="gated_linear", init="checkpoint", segment_size=4),
    "delta-grm-log": dict(memory="delta", segmentation="log", segment_size=2),
    "dla-grm": dict(memory="dla", segment_size=4, chunk_size=4),
    "titans-grm": dict(memory="titans", segment_size=4, chunk_size=2),
    # the other aggregations
    "linear-residual": dict(memory="linear", aggregation="residual", segment_size=4),
    "titans-soup": dict(memory="titans", aggregation="soup", segment_size=4, chunk_size=4),
    "gated_linear-ssc": dict(memory="gated_linear", aggregation="ssc", top_k=2, segment_size=3),
    # a base memory without caching, and attention (full and sliding window in one hybrid)
    "none-titans": dict(kind="none", memory="titans", chunk_size=10),
    "attention+sliding_window": dict(kind="attention", window=5, pattern=("attention", "sliding_window")),
}


def config_for(case: str):
    kw = dict(CASES[case])
    pattern = kw.pop("pattern", ())
    return tiny(num_layers=max(1, len(pattern)), pattern=pattern, **kw)


@functools.cache
def results(case: str):
    pure, state = PureModel.create(config_for(case), seed=1)
    toks = tokens(2, TOTAL)

    def loss(state, toks):
        logits = pure.apply(state, toks)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], toks[:, 1:]).mean(), logits

    @jax.jit
    def run(state, toks):
        (_, full), grads = jax.value_and_grad(loss, has_aux=True)(state, toks)
        cache = pure.init_cache(state, 2, TOTAL)
        h, cache = pure.hidden(state, toks[:, :PROMPT], cache)

        def step(cache, token):
            logits, cache = pure.forward(state, token[:, None], cache)
            return cache, logits[:, 0]

        _, decoded = jax.lax.scan(step, cache, toks[:, PROMPT:].T)
        return full, jnp.concatenate([pure.logits(state, h), decoded.transpose(1, 0, 2)], axis=1), grads

    return run(state, toks)


@pytest.mark.parametrize("case", list(CASES))
def test_prefill_decode_equals_forward(case):
    full, streamed, _ = results(case)
    assert full.shape == (2, TOTAL, 50) and full.dtype == jnp.float32
    np.testing.assert_allclose(streamed, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_finite_at_init(case):
    _, _, grads = results(case)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    for path, g in leaves:
        assert bool(jnp.all(jnp.isfinite(g))), jax.tree_util.keystr(path)
    mixer = [g for path, g in leaves if "mixer" in jax.tree_util.keystr(path)]
    assert mixer and all(float(jnp.abs(g).max()) > 0 for g in mixer), "a mixer parameter gets no gradient"


def test_public_prefill_and_decode_steps():
    """The jitted public API: prefill then decode one token at a time; the cache keeps its shapes (one compile)."""
    pure, state = PureModel.create(config_for("linear-residual"), seed=2)
    toks = tokens(2, 12, seed=3)
    full = jax.jit(pure.apply)(state, toks)
    cache = pure.init_cache(state, 2, 12)
    logits, cache = prefill(pure, state, toks[:, :5], cache, all_logits=True)
    np.testing.assert_allclose(logits, full[:, :5], rtol=1e-5, atol=1e-5)
    shapes = jax.tree.map(jnp.shape, cache)
    for t in range(5, 12):
        logits, cache = decode(pure, state, toks[:, t], cache)
        np.testing.assert_allclose(logits, full[:, t], rtol=1e-5, atol=1e-5)
        assert jax.tree.map(jnp.shape, cache) == shapes
    last, _ = prefill(pure, state, toks[:, :5], pure.init_cache(state, 2, 12))
    np.testing.assert_allclose(last, full[:, 4], rtol=1e-5, atol=1e-5)
