"""Parameters and training-state bytes per device for a preset and mesh, from abstract shapes (no devices needed).

    python -m tools.device_memory paper_760m paper_1_3b --devices 8 64            # FSDP over all devices
    python -m tools.device_memory paper_1_3b --devices 64 --tensor 4              # fsdp = 16, tensor = 4

A tool above the whole package (it builds abstract models and training states), run from the repository root.

Every parameter's per-device share follows the sharding rules (:mod:`mc_jax.parallel.rules`) on an ``AbstractMesh``;
a dimension that does not divide stays whole, exactly as in training. Per device: parameters, gradients (same
dtype) and AdamW's two moments (same dtype as the parameters), i.e. 4 x 4 bytes per float32 parameter. Activations
are not counted (they depend on batch, sequence length and ``remat``).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import PartitionSpec

from mc_jax.config import ModelConfig
from mc_jax.configs_util import load_preset
from mc_jax.models import abstract_model
from mc_jax.parallel.mesh import MESH_AXES, MeshConfig, abstract_mesh
from mc_jax.parallel.rules import param_specs
from mc_jax.train.step import split_model

GIB = 1024**3


@dataclass(frozen=True)
class DeviceMemory:
    """Per-device training state of one model on one mesh."""

    mesh: tuple[int, int, int]  # data, fsdp, tensor
    total_params: int
    params_per_device: int
    replicated_params: int  # parameters stored whole on every device (norm scales, small tensors, ...)
    param_bytes: int
    grad_bytes: int
    adam_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.param_bytes + self.grad_bytes + self.adam_bytes


def _shard_factor(spec: PartitionSpec, sizes: dict[str, int]) -> int:
    factor = 1
    for entry in spec:
        for axis in (entry,) if isinstance(entry, str) else (entry or ()):
            factor *= sizes[axis]
    return factor


def device_memory(model: ModelConfig, mesh: MeshConfig, num_devices: int) -> DeviceMemory:
    """Per-device parameters and bytes of ``model`` on ``mesh`` resolved for ``num_devices`` devices."""
    sizes = mesh.resolve(num_devices)
    mesh.check_model(model, sizes)
    amesh = abstract_mesh(sizes)
    _, params, _ = split_model(abstract_model(model))
    specs = param_specs(params, amesh)
    axis_sizes = dict(zip(MESH_AXES, sizes, strict=True))
    total = local = replicated = local_bytes = 0
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    for leaf, spec in zip(jax.tree.leaves(params), spec_leaves, strict=True):
        n = math.prod(leaf.shape)
        factor = _shard_factor(spec, axis_sizes)
        assert n % factor == 0, (leaf.shape, spec)
        total += n
        local += n // factor
        replicated += n if factor == 1 else 0
        local_bytes += n // factor * np.dtype(leaf.dtype).itemsize
    return DeviceMemory(sizes, total, local, replicated, local_bytes, local_bytes, 2 * local_bytes)


def format_table(rows: list[tuple[str, DeviceMemory]]) -> str:
    head = (f"{'preset':12s} {'devices':>7s} {'mesh (d,f,t)':>12s} {'params':>13s} {'params/device':>13s} "
            f"{'replicated':>10s} {'params GiB':>10s} {'grads GiB':>9s} {'Adam GiB':>8s} {'total GiB':>9s}")
    lines = [head, "-" * len(head)]
    for name, m in rows:
        mesh = ",".join(str(s) for s in m.mesh)
        lines.append(f"{name:12s} {math.prod(m.mesh):>7d} {mesh:>12s} {m.total_params:>13,d} "
                     f"{m.params_per_device:>13,d} {m.replicated_params:>10,d} {m.param_bytes / GIB:>10.3f} "
                     f"{m.grad_bytes / GIB:>9.3f} {m.adam_bytes / GIB:>8.3f} {m.total_bytes / GIB:>9.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.device_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("presets", nargs="+", help="model presets (mc_jax/configs/<name>.py defining a ModelConfig)")
    p.add_argument("--devices", type=int, nargs="+", default=[8, 64])
    p.add_argument("--tensor", type=int, default=1, help="tensor-parallel size; fsdp takes the rest")
    p.add_argument("--data", type=int, default=1, help="data-parallel size; fsdp takes the rest")
    args = p.parse_args(argv)
    rows = []
    for name in args.presets:
        model = load_preset(name)
        model = getattr(model, "model", model)  # a RunConfig preset: its model
        for n in args.devices:
            rows.append((name, device_memory(model, MeshConfig(data=args.data, fsdp=-1, tensor=args.tensor), n)))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
