"""Every mixer kind: prefill + token-by-token decoding reproduces the full forward pass, and the gradients at
initialisation are finite.

The prompt (7 tokens) ends mid-segment and decoding crosses several segment boundaries (segments of 3-4 tokens,
20 tokens in all). Compile time dominates on a CPU, so each configuration is one jit (forward with gradients,
prefill, and a ``lax.scan`` of single-token decode steps), shared by the tests through a cache.
"""

import functools

import jax
import jax.numpy as jnp
import optax
import pytest

from mc_jax.models.generate import _decode, decode, prefill
from mc_jax.models.pure import PureModel
from tests.helpers.model_helpers import tiny, tokens
from tests.helpers.tolerances import assert_allclose

PROMPT, TOTAL = 7, 20
CASES = {
    # every memory with grm (and, riding along, log segmentation, checkpoint init, the unrolled stack with remat)
    "linear-grm-loop-remat": dict(memory="linear", segment_size=4, scan_layers=False, remat=True),
    "gated_linear-grm-log": dict(memory="gated_linear", segmentation="log", segment_size=4),
    "delta-grm-checkpoint": dict(memory="delta", init="checkpoint", segment_size=4),
    "dla-grm": dict(memory="dla", segment_size=4, chunk_size=4),
    "swla-grm+none": dict(memory="swla", segment_size=4, pattern=("mc", "none")),  # k_prev carried across calls
    # titans: two inner chunks per segment, in a hybrid with its base layer ("none")
    "titans-grm+none": dict(memory="titans", segment_size=4, chunk_size=2, pattern=("mc", "none")),
    # the other aggregations; hybrids with the base layer ("none") and with attention / sliding window
    "linear-residual+none": dict(memory="linear", aggregation="residual", segment_size=4, pattern=("mc", "none")),
    "dla-soup": dict(memory="dla", aggregation="soup", segment_size=4, chunk_size=4),
    "gated_linear-ssc+attention+sliding_window": dict(
        memory="gated_linear", aggregation="ssc", top_k=2, segment_size=3, window=5,
        pattern=("mc", "attention", "sliding_window")),
}


def config_for(case: str):
    kw = dict(CASES[case])
    pattern = kw.pop("pattern", ())
    flags = {name: kw.pop(name) for name in ("scan_layers", "remat") if name in kw}
    return tiny(num_layers=max(1, len(pattern)), pattern=pattern, **kw).replace(**flags)


def case_tokens():
    return tokens(2, TOTAL)


@functools.cache
def results(case: str):
    pure, state = PureModel.create(config_for(case), seed=1)
    toks = case_tokens()

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
    assert_allclose(streamed, full, "float32")


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_finite_at_init(case):
    _, _, grads = results(case)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    for path, g in leaves:
        assert bool(jnp.all(jnp.isfinite(g))), jax.tree_util.keystr(path)
    mixer = [g for path, g in leaves if "mixer" in jax.tree_util.keystr(path)]
    assert mixer and all(float(jnp.abs(g).max()) > 0 for g in mixer), "a mixer parameter gets no gradient"


def test_public_prefill_and_decode_steps():
    """The jitted public API: prefill, then decode one token at a time; the cache keeps its shapes, so every
    step runs the same executable (the cost per token does not grow)."""
    case = "linear-residual+none"
    full = results(case)[0]
    pure, state = PureModel.create(config_for(case), seed=1)
    toks = case_tokens()
    cache = pure.init_cache(state, 2, TOTAL)
    logits, cache = prefill(pure, state, toks[:, :PROMPT], cache)
    assert_allclose(logits, full[:, PROMPT - 1], "float32")
    shapes = jax.tree.map(jnp.shape, cache)
    compiled = _decode._cache_size()
    for t in range(PROMPT, PROMPT + 6):
        logits, cache = decode(pure, state, toks[:, t], cache)
        assert_allclose(logits, full[:, t], "float32")
        assert jax.tree.map(jnp.shape, cache) == shapes
    assert _decode._cache_size() == compiled + 1  # every step reuses one executable: fixed-shape state
