"""Sequential chunk-state pass of the linear memories (``linear``, ``gated_linear``, ``delta``) as a Pallas kernel."""

from mc_jax.kernels.chunk_state.api import state_pass, state_pass_and_read
from mc_jax.kernels.chunk_state.config import BlockSizes

__all__ = ["BlockSizes", "state_pass", "state_pass_and_read"]
