import os

# XLA:CPU without its fusion emitters (much faster compiles of the many tiny test programs; numerics unchanged), and
# 8 simulated CPU devices for the sharding tests (chex.set_n_cpu_devices, below). Before any JAX backend starts.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite compiles many tiny programs: XLA's optimisation passes cost more than they save at these sizes
# (about 2x faster compiles). Numerics are unchanged: the tests compare against float64 references.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import chex  # noqa: E402
import pytest  # noqa: E402

chex.set_n_cpu_devices(8)  # sets --xla_force_host_platform_device_count=8 in XLA_FLAGS (inherited by subprocesses)

# Shared test helpers live in tests/helpers and are imported one way: ``from tests.helpers.tolerances import ...``
# (tests/ is a package; pytest puts the repository root on sys.path, so plain ``pytest`` and ``python -m pytest`` work).


@pytest.fixture
def x64():
    """Run a test with 64-bit types (the top rung of the ladder is float64)."""
    import jax

    with jax.enable_x64(True):
        yield


def pytest_collection_modifyitems(config, items):
    """The ``slow`` tests first (stable order otherwise): xdist hands out tests in collection order, so the long
    ones (subprocess runs, the README, the wheel) start early and the short ones fill in around them, instead of a
    long test starting last while the other worker has nothing left."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's caches of traced and compiled programs after every test module: a worker compiles thousands of
    distinct programs, and kept for the whole run they grew each worker by ~0.5 GB a minute (4.5 GB after the ops
    tests alone), the kind of late-suite memory an XLA abort in a long-lived worker feeds on. Tests share programs
    within a module, rarely across modules."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
