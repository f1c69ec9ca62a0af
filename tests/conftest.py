import os
from pathlib import Path

# XLA:CPU without its fusion emitters (much faster compiles of the many tiny test programs; numerics unchanged), and
# 8 simulated CPU devices for the sharding tests (chex.set_n_cpu_devices, below). Before any JAX backend starts.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite compiles many tiny programs: XLA's optimisation passes cost more than they save at these sizes
# (about 2x faster compiles). Numerics are unchanged: the tests compare against float64 references.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# Many tests compile the same programs (the tiny model's training step in every CLI, fault and resume test, most of
# them in subprocesses): a persistent compilation cache shared by the workers and the processes they start compiles
# each once per checkout (inherited through the environment; keyed by program, flags and versions). Every entry is
# kept (by default only compiles over a second are). tests/test_xla_cpu.py runs its fresh processes without it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "jax-compile"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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
