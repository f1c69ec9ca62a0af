"""The one tolerance table of the test suite (DESIGN.md section 6), and the comparison helpers.

A tolerance here is never loosened to make a test pass: a mismatch is a bug to find.
"""

from __future__ import annotations

import numpy as np

TOLERANCES = {
    # elementwise rtol / atol relative to the reference's scale
    "float64": dict(rtol=1e-10, atol=1e-10),
    "float32": dict(rtol=1e-5, atol=1e-5),
    # bf16 inputs, float32 accumulation: relative RMS error
    "bf16_outputs": 5e-3,
    "bf16_grads": 1e-2,
}

# Plain elementwise ``np.testing.assert_allclose`` tolerances (no scaling), each with the reason it is what it is.
ELEMENTWISE = {
    # float32 through different but equivalent computations (jit vs eager, streamed vs full, scan vs loop)
    "float32": dict(rtol=1e-5, atol=1e-5),
    # the same, for values of order 1 or smaller where an absolute floor of 1e-5 would hide a mismatch
    "float32_fine": dict(rtol=1e-5, atol=1e-6),
    # float32 scalars / norms compared relatively (no entry is near zero)
    "float32_relative": dict(rtol=1e-5, atol=0.0),
    # float32 values from the same operations in the same order up to a few roundings
    "float32_tight": dict(rtol=1e-6, atol=0.0),
    # gradients accumulated over micro-batches vs one batch: float32 sums in another order, entries near zero
    "grad_accumulation": dict(rtol=1e-5, atol=1e-7),
    # the first AdamW update is -lr * g / (|g| + eps) per entry: exact up to rounding, some entries tiny
    "optimizer_update": dict(rtol=1e-6, atol=1e-12),
    # the RMS of a normalised float32 row: mean of squares, eps inside the root
    "rms_norm": dict(rtol=1e-4, atol=0.0),
    # a bf16 result against a float32 reference, elementwise (bf16 keeps 8 significant bits: 2^-8 = 4e-3)
    "bf16_elementwise": dict(rtol=1e-2, atol=0.0),
    # values copied or computed by identical operations (numpy's default)
    "exact": dict(rtol=1e-7, atol=0.0),
    # frequencies of 4000 samples: the standard error is at most sqrt(0.25 / 4000) = 0.008, so 0.03 is ~4 sigma
    "sampling": dict(rtol=0.0, atol=0.03),
}


def assert_allclose(actual, expected, kind: str, name: str = "") -> None:
    """``np.testing.assert_allclose`` with the named :data:`ELEMENTWISE` tolerance (no scaling)."""
    np.testing.assert_allclose(actual, expected, **ELEMENTWISE[kind], err_msg=name)


def assert_close(actual, expected, dtype: str, name: str = "") -> None:
    """Elementwise closeness, with ``atol`` scaled by the reference's RMS (values are O(1) by construction)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    tol = TOLERANCES[dtype]
    scale = max(1.0, float(np.sqrt(np.mean(expected**2))))
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=name)


def relative_rms(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.sqrt(np.mean((actual - expected) ** 2)) / (np.sqrt(np.mean(expected**2)) + 1e-12))


def assert_rms_close(actual, expected, kind: str, name: str = "") -> None:
    err = relative_rms(actual, expected)
    assert err <= TOLERANCES[kind], f"{name}: relative RMS error {err:.2e} > {TOLERANCES[kind]:.0e}"


def check_read(fast, reference, a, dtype: str) -> None:
    """``fast(a)`` and ``reference(a)`` (tuples of arrays) agree, and so do the gradients of every input of a random
    linear functional of them; both run under ``jit``, as the library runs them."""
    import jax
    import jax.numpy as jnp

    outs, expected = jax.jit(fast)(a), jax.jit(reference)(a)
    for name, x, e in zip(("y", "gamma_on"), outs, expected):
        assert_close(x, e, dtype, name)
    cts = [jax.random.normal(jax.random.key(i + 5), e.shape, e.dtype) for i, e in enumerate(expected)]
    loss = lambda f: lambda args: sum(jnp.sum(c * o) for c, o in zip(cts, f(args)))
    grads, grads_ref = jax.jit(jax.grad(loss(fast)))(a), jax.jit(jax.grad(loss(reference)))(a)
    jax.tree_util.tree_map_with_path(lambda p, x, e: assert_close(x, e, dtype, jax.tree_util.keystr(p)),
                                     grads, grads_ref)
