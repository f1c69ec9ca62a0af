"""Keep these tests fast on a 2-core CPU: XLA compile time dominates tiny models, so compile with most
optimisations off (numerics are unchanged; every tolerance still holds). Restored after each module."""

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
