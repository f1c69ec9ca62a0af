"""The training state on a mesh: shardings of parameters and optimizer state, sharded initialisation, the global batch.

    shard = TrainSharding.create(mesh, abstract_params, tx)      # NamedShardings for params / opt state / batch
    params, opt_state = init_state(graphdef_fn, tx, shard)       # created directly in their shards (jit out_shardings)
    batch = shard.global_batch(local_batch)                      # this process's rows -> one global jax.Array

Parameters follow :mod:`mc_jax.parallel.rules`; the Adam moments mirror their parameter's sharding
(``optax.tree_map_params``); scalars such as optax's ``count`` are replicated on the mesh (left alone they would land
on device 0 and clash with the mesh). Batches ``[accum, micro_batch, L]`` are split over ``(data, fsdp)`` on the
micro-batch axis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mc_jax.parallel.rules import RULES, param_shardings


def _is_sharding(x: Any) -> bool:
    return isinstance(x, NamedSharding)


@dataclass(frozen=True)
class TrainSharding:
    """Where every piece of the training state lives on ``mesh``."""

    mesh: Mesh
    params: Any  # NamedSharding per parameter leaf
    opt_state: Any  # NamedSharding per optimizer-state leaf
    replicated: NamedSharding

    @classmethod
    def create(cls, mesh: Mesh, params: Any, tx: optax.GradientTransformation) -> TrainSharding:
        """``params`` may be arrays or ``ShapeDtypeStruct``s (the optimizer state is only traced)."""
        rep = NamedSharding(mesh, P())
        param_sh = param_shardings(params, mesh)
        abstract_opt = jax.eval_shape(tx.init, params)
        opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_sh,
                                       transform_non_params=lambda _: rep, is_leaf=_is_sharding)
        return cls(mesh, param_sh, opt_sh, rep)

    def batch(self, ndim: int = 3, axis: int = 1) -> NamedSharding:
        """Sharding of a batch leaf: dimension ``axis`` (the rows) over ``(data, fsdp)``."""
        spec = [None] * ndim
        axes = tuple(a for a in RULES["batch"] if a in self.mesh.shape)
        spec[axis] = axes
        return NamedSharding(self.mesh, P(*spec))

    def global_batch(self, local: dict[str, np.ndarray], axis: int = 1) -> dict[str, jax.Array]:
        """One global array per leaf from this process's rows (``jax.make_array_from_process_local_data``)."""
        _, count = process_rows(self.mesh)
        out = {}
        for key, value in local.items():
            value = np.asarray(value)
            shape = list(value.shape)
            shape[axis] *= count
            out[key] = jax.make_array_from_process_local_data(self.batch(value.ndim, axis), value, tuple(shape))
        return out

    def put_replicated(self, tree: Any) -> Any:
        """Host values (the same on every process) onto the mesh, replicated."""
        return jax.tree.map(lambda x: jax.device_put(np.asarray(x), self.replicated), tree)


def process_rows(mesh: Mesh) -> tuple[int, int]:
    """``(index, count)``: this process holds block ``index`` of ``count`` equal row blocks of every global batch.

    With the batch over ``(data, fsdp)``, a process's devices cover a contiguous block of rows; processes that share
    a block (when ``tensor`` spans hosts) load the same rows. The data pipeline shards its source the same way.
    """
    rows = 1
    for a in RULES["batch"]:
        rows *= mesh.shape.get(a, 1)
    sharding = NamedSharding(mesh, P(tuple(a for a in RULES["batch"] if a in mesh.shape)))
    indices = sharding.addressable_devices_indices_map((rows,))
    starts = sorted({(idx[0].start or 0) for idx in indices.values()})
    per_process = len(starts)
    if starts != list(range(starts[0], starts[0] + per_process)):
        raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows {starts} on this mesh; "
                         "order the devices so that each host's devices are adjacent on the data/fsdp axes")
    count = rows // per_process
    return starts[0] // per_process, count


def data_shard(mesh: Mesh | None) -> tuple[int, int]:
    """``(shard_index, shard_count)`` of this process's training data (``(0, 1)`` without a mesh)."""
    return (0, 1) if mesh is None else process_rows(mesh)


def init_state(make_params: Callable[[], Any], tx: optax.GradientTransformation, shard: TrainSharding
               ) -> tuple[Any, Any]:
    """Parameters (``make_params()``, traced) and optimizer state, created directly in their shards."""
    params = jax.jit(make_params, out_shardings=shard.params)()
    opt_state = jax.jit(tx.init, out_shardings=shard.opt_state)(params)
    return params, opt_state


__all__ = ["TrainSharding", "data_shard", "init_state", "process_rows"]
