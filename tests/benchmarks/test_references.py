"""The benchmark's references equal mc_jax in float64: the PyTorch code (``benchmarks/torch_reference.py``) and its
line-for-line JAX port (``benchmarks/jax_reference.py``).

Outputs and the gradients of q, k, v, u and the initial state, for grm and residual, both inits, at tiny awkward
shapes (a ragged last segment, a segment longer than the sequence, one-token segments, Dk != Dv). A benchmark that
compares codes is only meaningful if they compute the same thing: ``bench_torch`` reads torch against the port as the
backend's share of a gap, the port against mc_jax as the algorithms' share.

The torch tests are skipped where torch is not installed, which includes CI: torch is the optional extra
``pip install -e '.[torch]'`` (only the benchmark needs it), never part of ``test``. The port's tests always run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import jax_reference
from mc_jax.ops import memory_caching
from tests.helpers.op_inputs import make_inputs
from tests.helpers.tolerances import assert_close

# (T, C, Dk, Dv, initial state): ragged last segment; C > T (one online segment); C = 1; segments that tile T
SHAPES = [(11, 3, 5, 3, True), (5, 8, 4, 4, False), (6, 1, 3, 4, True), (12, 4, 4, 6, False)]


def _torch_reference():
    """``(torch, benchmarks.torch_reference)``; skips the test where torch (the optional extra) is missing. Only the
    import of torch may skip: a broken reference must fail."""
    torch = pytest.importorskip("torch")
    from benchmarks import torch_reference

    return torch, torch_reference


def _run_jax_port(args, ct, kw):
    """``(y, grads)`` of the JAX port under ``sum(ct * y)``."""
    def loss(a):
        full = {"u": None, "params": None, **a}
        y = jax_reference.memory_caching_linear(full["q"], full["k"], full["v"], full["u"], s0=full["params"], **kw)
        return jnp.sum(ct * y), y

    (_, y), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(args)
    assert y.dtype == jnp.float64
    return y, grads


def _run_torch(args, ct, kw):
    torch, reference = _torch_reference()
    t = {n: torch.tensor(np.asarray(x), requires_grad=True) for n, x in args.items()}
    y = reference.memory_caching_linear(t["q"], t["k"], t["v"], t.get("u"), s0=t.get("params"), **kw)
    (torch.tensor(np.asarray(ct)) * y).sum().backward()
    assert y.dtype == torch.float64
    return y.detach().numpy(), {n: x.grad.numpy() for n, x in t.items()}


@pytest.mark.parametrize("reference", ["jax_port", "torch"])
@pytest.mark.parametrize("init", ["independent", "checkpoint"])
@pytest.mark.parametrize("aggregation", ["grm", "residual"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"T{s[0]}C{s[1]}" for s in SHAPES])
def test_reference_equals_mc_jax(x64, aggregation, init, shape, reference):
    length, c, dk, dv, with_state = shape
    a = make_inputs("linear", batch=2, length=length, heads=2, dk=dk, dv=dv, seed=length + c,
                    initial_state=with_state)
    names = ["q", "k", "v"] + (["u"] if aggregation == "grm" else []) + (["params"] if with_state else [])
    ct = jax.random.normal(jax.random.key(7), (2, length, 2, dv), jnp.float64)
    kw = dict(aggregation=aggregation, segment_size=c, init=init)

    def loss_jax(args):
        full = {"u": None, "params": None, **args}
        y = memory_caching(full["q"], full["k"], full["v"], u=full["u"], params=full["params"], memory="linear",
                           impl="xla", **kw)
        return jnp.sum(ct * y), y

    args = {n: a[n] for n in names}
    (_, y_jax), g_jax = jax.jit(jax.value_and_grad(loss_jax, has_aux=True))(args)
    y_ref, g_ref = (_run_jax_port if reference == "jax_port" else _run_torch)(args, ct, kw)
    assert_close(y_ref, y_jax, "float64", "y")
    for n in names:
        assert_close(g_ref[n], g_jax[n], "float64", f"d{n}")


def test_jax_port_rejects_bad_input():
    q = jnp.zeros((1, 4, 1, 2))
    with pytest.raises(ValueError, match="aggregation / init / pool"):
        jax_reference.memory_caching_linear(q, q, q, q, aggregation="soup", segment_size=2)


def test_torch_reference_rejects_bad_input():
    torch, reference = _torch_reference()
    q = torch.zeros(1, 4, 1, 2)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        reference.memory_caching_linear(q, q, q, q, aggregation="soup", segment_size=2)
    with pytest.raises(ValueError, match="needs u"):
        reference.memory_caching_linear(q, q, q, None, aggregation="grm", segment_size=2)
    with pytest.raises(ValueError, match="segment_size"):
        reference.memory_caching_linear(q, q, q, q, segment_size=0)


def test_bench_torch_smoke(tmp_path):
    """The benchmark script runs end to end at a tiny shape (eager torch) and writes a checked JSON row."""
    import json

    _torch_reference()
    from benchmarks import bench_torch

    out = tmp_path / "bench.json"
    rc = bench_torch.main(["--lengths", "10", "--segment-sizes", "4", "--inits", "checkpoint", "--aggregations",
                           "grm", "--batch", "1", "--heads", "1", "--dim", "4", "--repeats", "1", "--no-compile",
                           "--out", str(out)])
    assert rc == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["checked"] and row["torch_eager"]["fwd_bwd"]["median_s"] > 0
    assert set(row["rel_max_error_vs_xla"]) == {"xla", "auto", "port", "torch"}
