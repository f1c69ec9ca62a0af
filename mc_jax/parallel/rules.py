"""Logical axis names, the rules mapping them to mesh axes, and the sharding of every parameter and activation.

Every dimension of every parameter gets a *logical* name from :data:`PARAM_AXES` (matched on the parameter's path,
so the layers need no sharding code); :data:`RULES` maps logical names to mesh axes:

    logical      mesh axes          where
    batch        (data, fsdp)       activations and the batch
    embed        fsdp               d_model dimension of weights (FSDP: the largest dimension of nearly every matrix)
    mem_hidden   fsdp               hidden width E*D of the learned initial deep memory W_0 (it has no d_model axis)
    heads        tensor             fused heads x head-dim projection dimension, per-head tensors (TP over heads)
    mlp          tensor             SwiGLU hidden units (TP)
    vocab        tensor             embedding rows / LM-head columns
    layers, seq, kv, conv, gates, norm   not sharded

A dimension whose size does not divide by its mesh axes is left unsharded (e.g. an odd vocabulary under TP).
Activations are constrained only when a mesh with more than one device is active (``jax.set_mesh``), so the
single-device program is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

Logical = tuple[str | None, ...]

RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "embed": ("fsdp",),
    "mem_hidden": ("fsdp",),
    "heads": ("tensor",),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "layers": (),
    "seq": (),
    "kv": (),
    "conv": (),
    "gates": (),
    "norm": (),
}

# Parameter path suffix -> logical axes of the (unstacked) parameter. The longest matching suffix wins.
PARAM_AXES: dict[str, Logical] = {
    "embed/embedding": ("vocab", "embed"),
    "head/kernel": ("embed", "vocab"),
    "pairs/in_proj/kernel": ("kv", "embed"),  # stacked MQAR: [key_emb ; value_emb] (2 d_model) -> d_model
    "pairs/out_proj/kernel": ("embed", "kv"),  # d_model -> the frozen value table's width
    "q_proj/kernel": ("embed", "heads"),
    "k_proj/kernel": ("embed", "heads"),
    "v_proj/kernel": ("embed", "heads"),
    "u_proj/kernel": ("embed", "heads"),
    "gate_proj/kernel": ("embed", "heads"),
    "gate_proj/bias": ("heads",),  # mixer.gate_bias (a learned bias unless None)
    "o_proj/kernel": ("heads", "embed"),
    "q_conv/kernel": ("conv", "heads"),
    "k_conv/kernel": ("conv", "heads"),
    "v_conv/kernel": ("conv", "heads"),
    # one projection for all gates, columns ordered (gate, head): a tensor split would cut across gates; it is small
    "gates/proj/kernel": ("embed", "gates"),
    "gates/proj/bias": ("gates",),
    "out_norm/scale": ("heads", "kv"),
    "mixer/W1": ("heads", "kv", "mem_hidden"),
    "mixer/W2": ("heads", "mem_hidden", "kv"),
    "mlp/gate/kernel": ("embed", "mlp"),
    "mlp/up/kernel": ("embed", "mlp"),
    "mlp/down/kernel": ("mlp", "embed"),
    "norm/scale": ("norm",),  # the final norm
    "mixer_norm/scale": ("norm",),
    "mlp_norm/scale": ("norm",),
}
STACKED_ROOT = "units"  # with scan_layers, parameters under this root carry a leading layer axis


def path_string(path: Sequence[Any]) -> str:
    """``units/blocks/0/mixer/q_proj/kernel`` for a pytree key path (a Variable's ``value`` entry dropped)."""
    names = (jax.tree_util.keystr((entry,), simple=True) for entry in path)
    return "/".join(n for n in names if n not in ("value", ".value"))


def param_logical_axes(path: str, ndim: int) -> Logical:
    """Logical axes of the parameter at ``path`` with ``ndim`` dimensions (``layers`` first when stacked).

    Raises ``KeyError`` for a parameter no rule covers, so a new layer cannot silently go unsharded.
    """
    names = path.split("/")
    best = None
    for suffix, axes in PARAM_AXES.items():
        parts = suffix.split("/")
        if names[-len(parts):] == parts and (best is None or len(parts) > len(best[0].split("/"))):
            best = (suffix, axes)
    if best is None:
        raise KeyError(f"no sharding rule for parameter {path!r}; add its logical axes to "
                       "mc_jax.parallel.rules.PARAM_AXES")
    axes = best[1]
    if ndim == len(axes) + 1 and names[0] == STACKED_ROOT:
        axes = ("layers",) + axes
    if ndim != len(axes):
        raise ValueError(f"parameter {path!r} has {ndim} dimensions but its rule {best[0]!r} names {len(axes)}")
    return axes


def _axis_sizes(mesh) -> Mapping[str, int]:
    return dict(mesh.shape)


def logical_to_spec(axes: Logical, shape: Sequence[int] | None, mesh, rules: Mapping[str, tuple[str, ...]] = RULES
                    ) -> PartitionSpec:
    """``PartitionSpec`` of ``axes`` on ``mesh``: mesh axes of size 1 or missing from the mesh are dropped (the spec
    shows what is really split); a dimension whose size does not divide by its mesh axes' product (``shape`` given)
    stays unsharded."""
    sizes = _axis_sizes(mesh)
    used: set[str] = set()
    out = []
    for i, name in enumerate(axes):
        mesh_axes = tuple(a for a in (rules.get(name, ()) if name else ())
                          if sizes.get(a, 1) > 1 and a not in used)
        if mesh_axes and shape is not None and shape[i] % math.prod(sizes[a] for a in mesh_axes):
            mesh_axes = ()
        used.update(mesh_axes)
        out.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    while out and out[-1] is None:
        out.pop()
    return PartitionSpec(*out)


def param_specs(params: Any, mesh, rules: Mapping[str, tuple[str, ...]] = RULES) -> Any:
    """A ``PartitionSpec`` for every leaf of ``params`` (arrays or ``ShapeDtypeStruct``s, e.g. from
    ``nnx.eval_shape``); ``mesh`` may be a ``Mesh`` or an ``AbstractMesh``."""
    def spec(path, leaf):
        shape = tuple(leaf.shape)
        return logical_to_spec(param_logical_axes(path_string(path), len(shape)), shape, mesh, rules)

    return jax.tree_util.tree_map_with_path(spec, params)


def param_shardings(params: Any, mesh, rules: Mapping[str, tuple[str, ...]] = RULES) -> Any:
    """``NamedSharding`` for every leaf of ``params`` on ``mesh`` (see :func:`param_specs`)."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params, mesh, rules),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


# ---- activations -----------------------------------------------------------------------------------------------------
def active_mesh():
    """The mesh set with ``jax.set_mesh`` when it has more than one device, else ``None``."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size <= 1:
        return None
    return mesh


def constrain(x: jax.Array, axes: Logical) -> jax.Array:
    """``with_sharding_constraint`` of ``x`` to logical ``axes`` under the active mesh; ``x`` itself without one."""
    mesh = active_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh))


__all__ = [
    "Logical", "PARAM_AXES", "RULES", "active_mesh", "constrain", "logical_to_spec", "param_logical_axes",
    "param_shardings", "param_specs", "path_string",
]
