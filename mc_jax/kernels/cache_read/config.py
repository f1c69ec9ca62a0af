"""Block sizes of the cached-memory read kernels (dense and sparse)."""

from __future__ import annotations

from dataclasses import dataclass

from mc_jax.kernels._common import STRATEGIES, check_choice


def default_block_q(t: int, strategy: str, cap: int = 128) -> int:
    """Largest divisor of ``t`` not above ``cap`` (a multiple of 8 on TPU, else ``t`` itself)."""
    for d in range(min(cap, t), 0, -1):
        if t % d == 0 and (strategy != "tpu" or d % 8 == 0):
            return d
    return t


def gpu_block_v(dk: int, dv: int) -> tuple[int, int]:
    """``(block_v, num_warps)`` of the gpu strategy: the state's columns are tiled when the state is wider than 64.

    On an H100 a whole 128x128 fp32 state per slot spilled registers (dense read 0.02x, sparse 0.12x of XLA, see
    docs/performance.md); 64-wide states ran whole (sparse read 1.2-20x faster than XLA). Wider states use 32-column
    tiles and 8 warps, the setting that rescued the chunk-state kernel at 128 (not yet measured for this kernel).
    """
    if max(dk, dv) <= 64 or dv % 32:
        return dv, 4
    return 32, 8


@dataclass(frozen=True)
class BlockSizes:
    """Tiling of the read kernels; ``None`` fields take the defaults below.

    Attributes:
        block_q: query rows per program; must divide T (TPU: T itself or a multiple of 8). Default
            :func:`default_block_q`. Inside ``memory_caching`` it also divides the segment, so that every query of a
            block sees the same cached slots.
        block_v: state columns per program (gpu strategy; the TPU kernel reads whole states). Default
            :func:`gpu_block_v`.
        num_warps, num_stages: Triton launch parameters (gpu strategy only); ``num_warps`` defaults with ``block_v``.
    """

    block_q: int | None = None
    block_v: int | None = None
    num_warps: int | None = None
    num_stages: int = 1

    def __post_init__(self):
        for name in ("block_q", "block_v", "num_warps", "num_stages"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive int{'' if name == 'num_stages' else ' or None'}; "
                                 f"got {value!r}")

    def resolve(self, t: int, dk: int, dv: int, strategy: str) -> tuple[int, int, int, int]:
        """``(block_q, block_v, num_warps, num_stages)`` for ``T = t`` and states ``[dk, dv]``, validated."""
        check_choice("strategy", strategy, STRATEGIES[1:])
        bq = default_block_q(t, strategy) if self.block_q is None else self.block_q
        if t % bq:
            raise ValueError(f"block_q must be a positive divisor of T={t}; got {bq!r}")
        if strategy == "tpu" and bq != t and bq % 8:
            raise ValueError(f"on TPU block_q must equal T ({t}) or be a multiple of 8 (sublanes); got {bq}")
        bv, warps = gpu_block_v(dk, dv) if strategy == "gpu" else (dv, 4)
        if self.block_v is not None:
            if strategy == "tpu":
                raise ValueError("block_v applies to the gpu strategy only (the TPU kernel reads whole states)")
            if dv % self.block_v:
                raise ValueError(f"block_v={self.block_v} must divide Dv={dv}")
            bv = self.block_v
        return bq, bv, self.num_warps or warps, self.num_stages
