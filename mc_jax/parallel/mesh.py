"""The device mesh: named axes ``data`` x ``fsdp`` x ``tensor`` from a frozen, validated :class:`MeshConfig`.

    data    plain data parallelism: the batch is split, parameters and optimizer state are replicated;
    fsdp    fully sharded data parallelism: the batch is split *and* parameters, gradients and optimizer state are
            sharded (along their ``embed`` dimension, see :mod:`mc_jax.parallel.rules`);
    tensor  tensor parallelism over heads (MC mixer, attention) and the MLP's hidden units.

The product of the three sizes is the number of devices; one size may be ``-1`` ("the rest"). ``data=fsdp=tensor=1``
(the default) means no mesh at all: today's single-device program. The mesh uses ``AxisType.Auto`` axes (GSPMD
propagation, as with ``pjit``); ``jax.make_mesh`` would default to ``Explicit`` axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
from jax.sharding import AbstractMesh, AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the mesh axes the batch is split over


@dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes (see the module docstring). ``-1`` = all devices not used by the other axes."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self) -> None:
        sizes = self.sizes
        for name, size in zip(MESH_AXES, sizes, strict=True):
            if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
                raise ValueError(f"mesh.{name} must be a positive int or -1 (the rest of the devices); got {size!r}")
        if sizes.count(-1) > 1:
            raise ValueError(f"at most one mesh axis may be -1 (the rest); got mesh.data={self.data} "
                             f"mesh.fsdp={self.fsdp} mesh.tensor={self.tensor}")

    @property
    def sizes(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)

    @property
    def single_device(self) -> bool:
        """``data=fsdp=tensor=1``: no mesh, the single-device program."""
        return self.sizes == (1, 1, 1)

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """The concrete ``(data, fsdp, tensor)`` for ``num_devices`` devices; ``ValueError`` when they do not fit."""
        sizes = list(self.sizes)
        known = math.prod(s for s in sizes if s != -1)
        desc = f"mesh.data={self.data} mesh.fsdp={self.fsdp} mesh.tensor={self.tensor}"
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(f"{desc}: {num_devices} devices are not divisible by {known} (the product of the "
                                 "fixed axes), so -1 has no integer size")
            sizes[sizes.index(-1)] = num_devices // known
        elif known != num_devices:
            hint = (f"; on one CPU, simulate {known} devices with "
                    f"XLA_FLAGS=--xla_force_host_platform_device_count={known} (set before the program starts)"
                    if known > num_devices and jax.default_backend() == "cpu" else "")
            raise ValueError(f"{desc}: the mesh has {known} devices but {num_devices} are available "
                             f"(jax.device_count()); make the product equal {num_devices}, or set one axis to -1 "
                             f"for the rest of the devices{hint}")
        return tuple(sizes)  # type: ignore[return-value]

    def check_model(self, model, sizes: tuple[int, int, int] | None = None) -> None:
        """Tensor parallelism splits heads and MLP units: both must divide by ``tensor``."""
        tensor = (sizes or self.sizes)[2]
        if tensor == -1 or tensor == 1:
            return
        if model.num_heads % tensor:
            raise ValueError(f"mesh.tensor={tensor} does not divide model.num_heads={model.num_heads} (tensor "
                             "parallelism splits whole heads)")
        if model.hidden_dim % tensor:
            raise ValueError(f"mesh.tensor={tensor} does not divide the MLP width {model.hidden_dim} "
                             "(model.mlp_hidden)")

    def check_batch(self, micro_batch: int, sizes: tuple[int, int, int] | None = None) -> None:
        """Every (micro-)batch is split over ``data x fsdp``."""
        data, fsdp, _ = sizes or self.sizes
        if -1 in (data, fsdp):
            return
        if micro_batch % (data * fsdp):
            raise ValueError(f"the micro-batch of {micro_batch} sequences (train.batch_size / train.accum) is not "
                             f"divisible by mesh.data x mesh.fsdp = {data * fsdp}")


def make_mesh(config: MeshConfig, devices=None) -> Mesh:
    """A ``Mesh`` with axes :data:`MESH_AXES` (``AxisType.Auto``) over ``devices`` (default: all devices).

    ``jax.make_mesh`` orders the devices for the hardware's topology (ICI / NVLink neighbours share the inner
    ``tensor`` axis); the outer ``data`` axis spans hosts first.
    """
    devices = jax.devices() if devices is None else list(devices)
    sizes = config.resolve(len(devices))
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def mesh_for_run(config: MeshConfig, model=None, micro_batch: int | None = None) -> Mesh | None:
    """The mesh of a training run, or ``None`` for the single-device program (all sizes 1, one process).

    Raises ``ValueError`` when the sizes do not fit the devices, the heads / MLP width or the batch.
    """
    if config.single_device:
        if jax.process_count() > 1:
            raise ValueError(f"this is process {jax.process_index()} of {jax.process_count()}: a multi-process run "
                             f"needs a mesh over all {jax.device_count()} devices; set e.g. mesh.data=-1 or "
                             "mesh.fsdp=-1")
        return None
    sizes = config.resolve(jax.device_count())
    if model is not None:
        config.check_model(model, sizes)
    if micro_batch is not None:
        config.check_batch(micro_batch, sizes)
    return make_mesh(config)


__all__ = ["BATCH_AXES", "MESH_AXES", "MeshConfig", "make_mesh", "mesh_for_run"]


def abstract_mesh(sizes: tuple[int, int, int]) -> AbstractMesh:
    """A device-free mesh of ``(data, fsdp, tensor)`` sizes (for shardings of abstract shapes)."""
    return AbstractMesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
