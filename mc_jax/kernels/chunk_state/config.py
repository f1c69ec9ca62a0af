"""Block sizes of the chunk-state kernel."""

from __future__ import annotations

from dataclasses import dataclass

from mc_jax.kernels._common import PRECISIONS, STRATEGIES, check_choice


@dataclass(frozen=True)
class BlockSizes:
    """Tiling of the chunk-state kernel.

    Attributes:
        block_v: columns of the state ``[Dk, Dv]`` per program (the state's columns evolve independently, so ``Dv``
            is a parallel grid axis). ``None``: all of ``Dv``.
        num_warps, num_stages: Triton launch parameters (gpu strategy only).
        precision: in-kernel matmuls: ``"highest"`` (fp32 products, matches the XLA op at the float32 tolerance) or
            ``"default"`` (the backend's choice: TF32 on NVIDIA GPUs, 1.2-3.9x faster on an H100 at a max error of
            5-7e-4; identical on CPU).
    """

    block_v: int | None = None
    num_warps: int = 4
    num_stages: int = 1
    precision: str = "highest"

    def __post_init__(self):
        if self.block_v is not None and (not isinstance(self.block_v, int) or self.block_v < 1):
            raise ValueError(f"block_v must be a positive int or None; got {self.block_v!r}")
        check_choice("precision", self.precision, tuple(PRECISIONS))
        for name in ("num_warps", "num_stages"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")

    def resolve_block_v(self, dv: int, strategy: str) -> int:
        """The Dv tile for a state of width ``dv`` under ``strategy`` (``gpu`` / ``tpu``), validated."""
        check_choice("strategy", strategy, STRATEGIES[1:])
        bv = dv if self.block_v is None else self.block_v
        if dv % bv:
            raise ValueError(f"block_v={bv} must divide Dv={dv}")
        if strategy == "tpu" and bv != dv and bv % 128:
            raise ValueError(f"on TPU block_v must equal Dv ({dv}) or be a multiple of 128 (lane width); got {bv}")
        return bv

    @classmethod
    def get_default(cls, dv: int, strategy: str, dk: int | None = None) -> "BlockSizes":
        """GPU: 32-column tiles (4 warps; 8 from Dk = 128), TPU: 128-lane tiles, or all of Dv when smaller.

        Measured on an H100 (``benchmarks/sweep_chunk_state.py``, delta rule, T = 8192, fp32 products; results in
        ``benchmarks/results/gpu_h100_2026-11-26``): at Dk = Dv = 64 a 32-column tile ran the pass in 0.83 ms against
        18.4 ms for the whole 64-column state (register spills) and 1.87 ms for XLA's scan; at Dk = Dv = 128, 8 warps
        and 32 columns took 3.1 ms (4 warps: 14.1 ms; 64 columns: 15.3 ms).
        """
        if strategy == "tpu":
            return cls(block_v=128 if dv % 128 == 0 else None)
        warps = 8 if (dk or 0) >= 128 else 4
        return cls(block_v=32 if dv % 32 == 0 and dv > 32 else None, num_warps=warps)
