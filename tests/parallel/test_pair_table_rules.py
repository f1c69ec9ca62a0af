"""Sharding rules of the pair-table (stacked MQAR) model: every parameter has logical axes, the pair projections
shard as the table says, and a forward pass on a mesh equals the single-device one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mc_jax.config import MixerConfig, ModelConfig
from mc_jax.data import StackedMQARConfig, StackedMQARSource
from mc_jax.models import PureModel, abstract_model, create_model
from mc_jax.parallel import MeshConfig, make_mesh
from mc_jax.parallel.mesh import abstract_mesh
from mc_jax.parallel.rules import param_logical_axes, param_specs
from mc_jax.train.optim import param_path
from mc_jax.train.step import merge_model, split_model
from tests.helpers.tolerances import assert_close

BASE = ModelConfig(inputs="pair_table", vocab_size=16, num_keys=16, d_model=16, num_layers=2, num_heads=2,
                   mixer=MixerConfig(kind="mc", memory="linear", aggregation="grm", segment_size=2))
MODELS = {
    "mc_stacked": BASE,
    "none_unstacked_untied": BASE.replace(scan_layers=False, tie_embeddings=False,
                                          mixer=MixerConfig(kind="none", memory="delta")),
    "mc_attention_titans": BASE.replace(pattern=("mc", "attention"),
                                        mixer=MixerConfig(kind="mc", memory="titans", segment_size=2)),
}


def _flat_specs(params, mesh) -> dict[str, P]:
    specs = param_specs(params, mesh)
    return {param_path(p): s for p, s in jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, P))}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_parameter_of_a_pair_table_model_has_a_rule(name):
    _, params, _ = split_model(abstract_model(MODELS[name]))
    leaves = {param_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
    for path, x in leaves.items():  # raises KeyError / ValueError for a parameter without a (fitting) rule
        assert len(param_logical_axes(path, x.ndim)) == x.ndim
    flat = _flat_specs(params, abstract_mesh((2, 2, 2)))
    assert flat.keys() == leaves.keys()
    assert param_logical_axes("pairs/in_proj/kernel", 2) == ("kv", "embed")
    assert param_logical_axes("pairs/out_proj/kernel", 2) == ("embed", "kv")
    assert leaves["pairs/in_proj/kernel"].shape == (32, 16) and leaves["pairs/out_proj/kernel"].shape == (16, 16)
    assert flat["pairs/in_proj/kernel"] == P(None, "fsdp")
    assert flat["pairs/out_proj/kernel"] == P("fsdp")
    assert not any(p.startswith(("embed", "head")) for p in flat)


def test_forward_on_a_mesh_equals_the_single_device_one():
    config = MODELS["mc_stacked"]
    pure, state = PureModel.split(create_model(config, seed=0))
    cfg = StackedMQARConfig(num_kv_pairs=4, num_keys=16, num_values=16)
    src = StackedMQARSource(cfg, 8, seed=0)
    inputs = jnp.asarray(np.stack([src[i]["inputs"] for i in range(8)]))
    want = np.asarray(jax.jit(pure.apply)(state, inputs))

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    graphdef, params, rest = split_model(create_model(config, seed=0))
    specs = param_specs(params, mesh)
    sharded = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                                                  is_leaf=lambda x: isinstance(x, P)))
    assert sharded["pairs"]["in_proj"]["kernel"].addressable_shards[0].data.shape == (32, 8)

    @jax.jit
    def apply(p, x):
        return merge_model(graphdef, p, rest)(x)

    with jax.set_mesh(mesh):
        got = apply(sharded, jax.device_put(inputs, NamedSharding(mesh, P(("data", "fsdp")))))
    assert_close(np.asarray(got), want, "float32", "sharded logits")
