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
