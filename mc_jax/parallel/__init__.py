"""Scale-out below the layers: the device mesh, sharding rules and the sharded MC op.

    mesh.py         MeshConfig (data x fsdp x tensor), make_mesh, abstract_mesh
    rules.py        logical axis names -> mesh axes; the sharding of every parameter and activation
    shard_op.py     the MC op per (batch, head) shard inside shard_map

The layers import this package, so it imports nothing above :mod:`mc_jax.ops` / :mod:`mc_jax.dispatch`. The
training-state shardings are :mod:`mc_jax.train.sharding`, the multi-host start-up :mod:`mc_jax.train.distributed`,
the per-device memory report the tool ``tools/device_memory.py``.
"""

from mc_jax.parallel.mesh import BATCH_AXES, MESH_AXES, MeshConfig, abstract_mesh, make_mesh, mesh_for_run
from mc_jax.parallel.rules import RULES, active_mesh, constrain, param_shardings, param_specs

__all__ = [
    "BATCH_AXES", "MESH_AXES", "MeshConfig", "RULES", "abstract_mesh", "active_mesh", "constrain", "make_mesh",
    "mesh_for_run", "param_shardings", "param_specs",
]
