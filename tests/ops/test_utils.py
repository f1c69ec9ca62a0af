"""Numerical helpers of the ops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.scipy.linalg import solve_triangular

from mc_jax.ops.utils import segsum, unit_lower_inverse
from tests.helpers.tolerances import assert_close


@pytest.mark.parametrize("c", [1, 2, 5, 16, 37, 64])
def test_unit_lower_inverse_equals_triangular_solve(x64, c):
    lower = jnp.tril(jax.random.uniform(jax.random.key(c), (3, c, c), jnp.float64, -1, 1), -1)
    system = lower + jnp.eye(c)
    expected = solve_triangular(system, jnp.broadcast_to(jnp.eye(c), system.shape), lower=True, unit_diagonal=True)
    assert_close(unit_lower_inverse(system), expected, "float64")
    assert_close(unit_lower_inverse(system) @ system, jnp.broadcast_to(jnp.eye(c), system.shape), "float64")


def test_segsum_of_a_zero_gate_has_no_nan(x64):
    x = jnp.array([-0.5, -jnp.inf, -0.25])
    expected = jnp.array([[0.0, -jnp.inf, -jnp.inf], [-jnp.inf, 0.0, -jnp.inf], [-jnp.inf, -0.25, 0.0]])
    assert jnp.array_equal(segsum(x), expected)
