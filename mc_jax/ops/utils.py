"""Small numerical helpers shared by the ops: stable segment sums, padding, dtypes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mc_jax.typing import Array, Float, Int


def check_choice(name: str, value, options) -> None:
    """``value`` must be one of ``options``."""
    if value not in options:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(options)}")


def check_positive(name: str, value) -> None:
    """``value`` must be a positive int (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


def state_dtype() -> jnp.dtype:
    """Recurrent states are float32, or float64 when x64 is enabled (DESIGN.md section 1)."""
    return jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32


def prefix_sum(x: Array, axis: int) -> Array:
    """Inclusive cumulative sum along ``axis`` as an associative scan (strided slices and adds in ``x``'s own layout).

    ``jnp.cumsum`` along an inner axis lowers on XLA:CPU to a ``reduce-window`` over a transposed copy: 3x slower
    forward and 2x forward+backward for the residual read's stack of states at ``N = 64`` (docs/performance.md).
    (For the online memory's pooled keys, a cumsum over a segment's tokens, the scan moved the time elsewhere and
    the op was no faster at T=4096, C=256: not used there.) Element ``i`` combines only elements ``<= i``, so a
    non-finite later entry never reaches it.
    """
    return jax.lax.associative_scan(jnp.add, x, axis=axis)


def segsum(x: Float[Array, "... c"]) -> Float[Array, "... c c"]:
    """``out[..., i, j] = sum_{j < m <= i} x[..., m]`` for ``i >= j`` and ``-inf`` above the diagonal.

    Computed as a masked cumulative sum (no difference of two cumsums), so ``exp(segsum(log_gates))`` is the
    lower-triangular matrix of products ``prod_{j < m <= i} gate_m`` without cancellation, and a gate of exactly
    zero (``log = -inf``) gives exact zeros rather than NaN.
    """
    c = x.shape[-1]
    rows = jnp.broadcast_to(x[..., :, None], x.shape + (c,))  # rows[i, j] = x_i
    strict = jnp.tril(jnp.ones((c, c), dtype=bool), -1)
    summed = jnp.cumsum(jnp.where(strict, rows, 0.0), axis=-2)
    return jnp.where(jnp.tril(jnp.ones((c, c), dtype=bool)), summed, -jnp.inf)


def decay_matrix(log_gate: Float[Array, "... c"]) -> Float[Array, "... c c"]:
    """Lower-triangular ``D[i, j] = prod_{j < m <= i} exp(log_gate_m)`` (ones on the diagonal, zeros above)."""
    return jnp.exp(segsum(log_gate))


def taint(bad: Array) -> Array:
    """Tokens at or after the first ``True`` of ``bad [..., c]`` in their chunk (``bad`` cumulated along the chunk).

    The chunk forms contract over the tokens of a chunk with matmuls, where a structurally zero coefficient times a
    non-finite entry is NaN (``0 * inf``, ``0 * nan``). They replace the inputs of tainted tokens by finite identity
    values, compute, and set the outputs of tainted tokens to NaN (``jnp.where`` selects throughout), so a
    non-finite input at token ``p`` never reaches the outputs of tokens before ``p`` (causality for any value).
    """
    return jnp.cumsum(bad.astype(jnp.int32), axis=-1) > 0


def bad_rows(x: Array) -> Array:
    """``[..., d] -> [...]``: rows holding a NaN or an infinity."""
    return ~jnp.all(jnp.isfinite(x), axis=-1)


def bad_log_gate(g: Array) -> Array:
    """A log gate (``log_decay``, ``log(1 - alpha)``, ``log(eta)``) that is NaN or ``+inf``; ``-inf`` (a gate of
    exactly zero, a full reset) is a valid value."""
    return ~(g < jnp.inf)


def pad_axis(x: Array, size: int, axis: int, value: float = 0.0) -> Array:
    """Pad ``x`` at the end of ``axis`` up to ``size`` with ``value``."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def take_per_group(a: Array, index: Int[Array, "g ..."]) -> Array:
    """``a[g, index[g, ...]]`` for every group ``g`` (``a [g, m, ...]``) as one gather over the flattened leading
    axes (whole contiguous rows; XLA:CPU runs this faster than a batched gather)."""
    g, m = a.shape[:2]
    offset = (jnp.arange(g) * m).reshape((g,) + (1,) * (index.ndim - 1))
    return a.reshape(g * m, *a.shape[2:])[index + offset]


def largest_divisor_at_most(n: int, cap: int) -> int:
    """The largest divisor of ``n`` that is ``<= cap`` (used to pick an inner chunk that tiles a segment)."""
    cap = max(1, min(cap, n))
    for d in range(cap, 0, -1):
        if n % d == 0:
            return d
    return 1


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints."""
    return -(-a // b)


def gelu_and_derivative(z: Array) -> tuple[Array, Array]:
    """``gelu(z)`` (tanh approximation, ``jax.nn.gelu`` default) and its elementwise derivative."""
    return jax.jvp(jax.nn.gelu, (z,), (jnp.ones_like(z),))


def unit_lower_inverse(system: Float[Array, "... c c"], leaf: int = 16) -> Float[Array, "... c c"]:
    """Exact inverse of a unit lower-triangular matrix ``I + L`` using matmuls only.

    Recursive 2x2 blocks, ``[[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]`` (about the work of a forward
    substitution), down to blocks of ``leaf`` rows inverted by doubling: ``L`` is nilpotent (``L^c = 0``), so
    ``(I + L)^-1 = prod_{j < ceil(log2 c)} (I + (-L)^(2^j))`` holds exactly -- every term of the series is present,
    nothing is truncated. Used instead of ``solve_triangular``, whose LAPACK custom call on CPU deadlocked XLA's
    two worker threads on a 2-core machine at T=4096 and ran ~200x slower under threaded OpenBLAS
    (docs/performance.md).
    """
    c = system.shape[-1]
    if c > leaf and c % 2 == 0:
        m = c // 2
        a_inv = unit_lower_inverse(system[..., :m, :m], leaf)
        d_inv = unit_lower_inverse(system[..., m:, m:], leaf)
        lower = -(d_inv @ system[..., m:, :m] @ a_inv)
        top = jnp.concatenate([a_inv, jnp.zeros_like(a_inv)], axis=-1)
        return jnp.concatenate([top, jnp.concatenate([lower, d_inv], axis=-1)], axis=-2)
    eye = jnp.eye(c, dtype=system.dtype)
    power = eye - system  # -L
    inverse = eye + power
    for _ in range(max(0, math.ceil(math.log2(max(c, 1))) - 1)):
        power = power @ power
        inverse = inverse + inverse @ power
    return inverse
