"""Mesh config validation, the sharding-rule table (every parameter of every mixer kind), the distributed settings."""

from __future__ import annotations

import jax
import pytest
from jax.sharding import PartitionSpec as P

from mc_jax.config import MixerConfig, ModelConfig
from mc_jax.models import abstract_model
from mc_jax.parallel import MeshConfig, make_mesh, mesh_for_run
from mc_jax.parallel.mesh import abstract_mesh
from mc_jax.parallel.rules import logical_to_spec, param_logical_axes, param_specs
from mc_jax.train.distributed import initialize_from_env, resolve_settings
from mc_jax.train.optim import param_path
from mc_jax.train.step import split_model
from tests.helpers.parallel_helpers import parallel_config


# ---- MeshConfig ------------------------------------------------------------------------------------------------------
def test_mesh_sizes_resolve_with_the_rest():
    assert MeshConfig(data=2, fsdp=-1).resolve(8) == (2, 4, 1)
    assert MeshConfig(tensor=2, data=-1).resolve(8) == (4, 1, 2)
    assert MeshConfig(data=2, fsdp=4).resolve(8) == (2, 4, 1)
    mesh = make_mesh(MeshConfig(data=2, fsdp=-1, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("kwargs, n, message", [
    (dict(data=3), 8, "the mesh has 3 devices but 8 are available"),
    (dict(data=2, fsdp=2), 8, "the mesh has 4 devices but 8 are available"),
    (dict(data=3, fsdp=-1), 8, "not divisible by 3"),
])
def test_mesh_product_must_match_the_devices(kwargs, n, message):
    with pytest.raises(ValueError, match=message):
        MeshConfig(**kwargs).resolve(n)


@pytest.mark.parametrize("kwargs, message", [
    (dict(data=0), "mesh.data must be a positive int or -1"),
    (dict(fsdp=-2), "mesh.fsdp must be a positive int or -1"),
    (dict(data=-1, fsdp=-1), "at most one mesh axis may be -1"),
])
def test_mesh_config_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MeshConfig(**kwargs)


def test_heads_mlp_and_batch_must_divide():
    with pytest.raises(ValueError, match="mesh.tensor=4 does not divide model.num_heads=2"):
        parallel_config("mesh.tensor=4", "mesh.data=2")
    with pytest.raises(ValueError, match="does not divide the MLP width 64"):
        MeshConfig(tensor=3).check_model(ModelConfig(vocab_size=32, d_model=12, num_heads=3, mlp_hidden=64))
    with pytest.raises(ValueError, match="micro-batch of 8 sequences .* not divisible by mesh.data x mesh.fsdp = 16"):
        parallel_config("mesh.data=2", "mesh.fsdp=8")
    # -1: checked when the mesh is built
    config = parallel_config("mesh.tensor=-1")
    with pytest.raises(ValueError, match="mesh.tensor=8 does not divide model.num_heads=2"):
        mesh_for_run(config.mesh, config.model, config.train.micro_batch)


def test_default_mesh_is_the_single_device_program():
    config = parallel_config()
    assert config.mesh.single_device and mesh_for_run(config.mesh, config.model, 8) is None


# ---- rules -----------------------------------------------------------------------------------------------------------
MODELS = {
    "mc_titans_attention": parallel_config().model,
    "delta_none_unstacked": ModelConfig(vocab_size=32, d_model=16, num_layers=2, num_heads=2, scan_layers=False,
                                        tie_embeddings=False, mixer=MixerConfig(kind="none", memory="delta")),
    "sliding_window_gated": ModelConfig(vocab_size=32, d_model=16, num_layers=2, num_heads=2,
                                        pattern=("mc", "sliding_window"),
                                        mixer=MixerConfig(memory="gated_linear", aggregation="ssc", top_k=1,
                                                          window=4, segment_size=8)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_parameter_has_a_rule(name):
    _, params, _ = split_model(abstract_model(MODELS[name]))
    specs = param_specs(params, abstract_mesh((2, 2, 2)))
    flat = {param_path(p): s for p, s in jax.tree_util.tree_leaves_with_path(specs,
                                                                             is_leaf=lambda x: isinstance(x, P))}
    assert len(flat) == len(jax.tree.leaves(params))
    sharded = [k for k, s in flat.items() if any(e is not None for e in s)]
    assert len(sharded) >= len(flat) // 2, flat  # the matrices at least


def test_unknown_parameters_and_wrong_ranks_are_refused():
    with pytest.raises(KeyError, match="no sharding rule for parameter 'units/blocks/0/mixer/new_proj/kernel'"):
        param_logical_axes("units/blocks/0/mixer/new_proj/kernel", 2)
    with pytest.raises(ValueError, match="has 4 dimensions"):
        param_logical_axes("embed/embedding", 4)
    assert param_logical_axes("units/blocks/0/mlp/up/kernel", 3) == ("layers", "embed", "mlp")
    assert param_logical_axes("units/0/blocks/0/mlp/up/kernel", 2) == ("embed", "mlp")  # not stacked


def test_indivisible_dimensions_stay_whole():
    mesh = abstract_mesh((1, 8, 1))
    assert logical_to_spec(("vocab", "embed"), (32, 16), mesh) == P(None, "fsdp")
    assert logical_to_spec(("vocab", "embed"), (32, 12), mesh) == P()  # 12 rows do not split over 8
    assert logical_to_spec(("batch", "seq", None), (16, 5, 3), abstract_mesh((2, 4, 1))) == P(("data", "fsdp"))
    assert logical_to_spec(("batch", "seq", None), (16, 5, 3), abstract_mesh((1, 4, 2))) == P("fsdp")  # size 1 out
    assert logical_to_spec(("vocab", "embed"), (32, 16), abstract_mesh((1, 4, 2))) == P("tensor", "fsdp")


# ---- distributed settings --------------------------------------------------------------------------------------------
def test_distributed_settings_from_flags_and_environment():
    env = {"MC_COORDINATOR": "10.0.0.1:1234", "MC_NUM_PROCESSES": "4", "MC_PROCESS_ID": "3"}
    s = resolve_settings(env=env)
    assert (s.mode, s.coordinator, s.num_processes, s.process_id) == ("explicit", "10.0.0.1:1234", 4, 3)
    s = resolve_settings("h:1", 2, 0, env=env)  # flags win
    assert (s.coordinator, s.num_processes, s.process_id) == ("h:1", 2, 0)
    assert resolve_settings(env={}).mode == "single"
    assert resolve_settings(auto=True, env={}).mode == "auto"
    assert resolve_settings(env={"MC_DISTRIBUTED": "1"}).mode == "auto"
    assert resolve_settings(env={**env, "MC_LOCAL_DEVICE_IDS": "0,1"}).local_device_ids == (0, 1)
    with pytest.raises(ValueError, match="needs process_id"):
        resolve_settings(env={"MC_COORDINATOR": "h:1", "MC_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="must be in \\[0, num_processes=2\\)"):
        resolve_settings("h:1", 2, 2, env={})
    with pytest.raises(ValueError, match="HOST:PORT"):
        resolve_settings("h", 2, 0, env={})
    with pytest.raises(ValueError, match="without a coordinator"):
        resolve_settings(env={"MC_PROCESS_ID": "1"})
    assert initialize_from_env(env={}).mode == "single"  # a single process: nothing to start
