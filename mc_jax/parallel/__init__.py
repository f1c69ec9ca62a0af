"""Scale-out: the device mesh, sharding rules, the sharded MC op and the multi-host runtime.

    mesh.py         MeshConfig (data x fsdp x tensor), make_mesh
    rules.py        logical axis names -> mesh axes; the sharding of every parameter and activation
    shard_op.py     the MC op per (batch, head) shard inside shard_map
    distributed.py  jax.distributed.initialize from flags / environment
    memory.py       parameters and bytes per device for a preset and mesh (``python -m mc_jax.parallel.memory``)
    train.py        shardings of the training state, the global batch, sharded initialisation

Only the light modules are imported here (the layers import :mod:`mc_jax.parallel.rules`).
"""

from mc_jax.parallel.mesh import BATCH_AXES, MESH_AXES, MeshConfig, make_mesh, mesh_for_run
from mc_jax.parallel.rules import RULES, active_mesh, constrain, param_shardings, param_specs

__all__ = [
    "BATCH_AXES", "MESH_AXES", "MeshConfig", "RULES", "active_mesh", "constrain", "make_mesh", "mesh_for_run",
    "param_shardings", "param_specs",
]
