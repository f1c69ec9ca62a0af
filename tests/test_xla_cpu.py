"""The XLA:CPU work-around applied on ``import mc_jax`` (mc_jax/_xla_cpu.py): when it applies, and that jitted code
which jaxlib 0.10's ynn fusions miscompiled gives the eager result in fresh processes with the usual optimisations
(the suite itself runs with JAX_DISABLE_MOST_OPTIMIZATIONS, which hides the miscompilation)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jaxlib
import pytest

from mc_jax import _xla_cpu
from mc_jax._xla_cpu import YNN_FLAG, flags_with_workaround


@pytest.mark.parametrize("flags,version,expected", [
    ("", "0.10.2", f"{YNN_FLAG}="),
    ("--xla_force_host_platform_device_count=8", "0.10.0",
     f"--xla_force_host_platform_device_count=8 {YNN_FLAG}="),
    (f"{YNN_FLAG}=dot", "0.10.2", f"{YNN_FLAG}=dot"),  # the user's own setting wins
    ("", "0.9.1", ""),  # versions not known to need it (XLA aborts on flags it does not know)
    ("", "0.11.2", ""),
    ("", "unknown", ""),
])
def test_flags_with_workaround(flags, version, expected):
    assert flags_with_workaround(flags, version) == expected


def test_apply_respects_opt_out_and_warns_when_too_late(monkeypatch):
    monkeypatch.setattr(jaxlib, "__version__", "0.10.2")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")
    monkeypatch.setenv(_xla_cpu.OPT_OUT_ENV, "1")
    assert not _xla_cpu.apply() and os.environ["XLA_FLAGS"] == "--xla_cpu_use_fusion_emitters=false"
    monkeypatch.delenv(_xla_cpu.OPT_OUT_ENV)
    monkeypatch.setattr(_xla_cpu, "_cpu_backend_exists", lambda: True)
    with pytest.warns(RuntimeWarning, match="cannot take effect"):
        assert not _xla_cpu.apply()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_use_fusion_emitters=false"
    monkeypatch.setattr(_xla_cpu, "_cpu_backend_exists", lambda: False)
    assert _xla_cpu.apply() and os.environ["XLA_FLAGS"] == f"--xla_cpu_use_fusion_emitters=false {YNN_FLAG}="


# One chunk of a linear memory followed by a reduction: with jaxlib 0.10's default ynn fusions the jitted program
# returned inf / nan / garbage in most fresh processes (right in the others).
_SCRIPT = textwrap.dedent("""
    import os, numpy as np
    import mc_jax
    import jax, jax.numpy as jnp
    from mc_jax.ops import memory_caching
    from tests.helpers.tolerances import assert_allclose
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 64, 1, 32)), jnp.float32) for _ in range(3))
    q, k = (x / jnp.linalg.norm(x, axis=-1, keepdims=True) for x in (q, k))
    f = lambda q, k, v: jnp.sum(memory_caching(q, k, v, segment_size=64, chunk_size=64) ** 2, -1)
    assert_allclose(jax.jit(f)(q, k, v), f(q, k, v), "float32")
    print("flags:", os.environ.get("XLA_FLAGS", ""))
""")


def test_jitted_single_chunk_reduction_is_right_in_fresh_processes():
    # each process compiles for itself (never from a persistent cache: the miscompilation was a property of a compile)
    drop = ("XLA_FLAGS", "JAX_DISABLE_MOST_OPTIMIZATIONS", "JAX_COMPILATION_CACHE_DIR")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["JAX_PLATFORMS"] = "cpu"
    needed = flags_with_workaround("", jaxlib.__version__) != ""
    for _ in range(3):  # the miscompiled program was wrong in ~4 of 5 processes
        out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert (f"{YNN_FLAG}=" in out.stdout) == needed, out.stdout
