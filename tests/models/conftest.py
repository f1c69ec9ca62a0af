"""Keep these tests fast on a small CPU: XLA compile time dominates tiny models.

While a module of this folder runs, compile with most optimisations off and without XLA:CPU's fusion emitters
(together ~3x faster compiles here; numerics unchanged, every tolerance holds). Both are restored afterwards, so
other folders are unaffected. (Setting ``XLA_FLAGS=--xla_cpu_use_fusion_emitters=false`` for the whole suite would
do the same globally.) If a JAX upgrade moves the private hook, the tests still run, only slower.
"""

import jax
import pytest
from jax._src import compiler

_FAST_CPU_COMPILE = {"xla_cpu_use_fusion_emitters": False}


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    original = getattr(compiler, "get_compile_options", None)
    if original is not None and jax.default_backend() == "cpu":

        def get_compile_options(*args, env_options_overrides=None, **kwargs):
            options = dict(_FAST_CPU_COMPILE) | dict(env_options_overrides or {})
            return original(*args, env_options_overrides=options, **kwargs)

        compiler.get_compile_options = get_compile_options
    yield
    if original is not None:
        compiler.get_compile_options = original
    jax.config.update("jax_disable_most_optimizations", previous)
