"""A checkpoint written on one mesh restores onto another (each array in the new mesh's shards, bit for bit) and
training continues as if uninterrupted."""

from __future__ import annotations

import jax
import numpy as np

from mc_jax.train import Checkpointer
from mc_jax.train.optim import param_path
from tests.helpers.parallel_helpers import parallel_config, run_steps, setup
from tests.helpers.tolerances import assert_close

MESH_A, MESH_B = (1, 8, 1), (2, 2, 2)  # FSDP over 8 -> data x fsdp x tensor


def _flat(tree) -> dict[str, jax.Array]:
    return {param_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_checkpoint_from_one_mesh_restores_on_another_and_training_continues(tmp_path):
    config = parallel_config()
    # uninterrupted on mesh A: 4 steps; the state after step 2 is saved
    p2, o2, first = run_steps(MESH_A, last=2)
    ckpt = Checkpointer(tmp_path, keep=2)
    ckpt.save(2, p2, o2, data_state={"next_index": 2}, config=config)
    ckpt.close()
    saved_p, saved_o = jax.device_get(p2), jax.device_get(o2)
    _, _, rest_a = run_steps(MESH_A, p2, o2, first=2, last=4)

    # restore onto mesh B's shardings (the targets are mesh B's freshly initialised state)
    _, p_b, o_b, shard_b = setup(MESH_B)
    reader = Checkpointer(tmp_path, read_only=True)
    params, opt_state, meta = reader.restore(2, p_b, o_b)
    reader.close()
    assert meta["step"] == 2
    for (path, x), target in zip(_flat(params).items(), _flat(p_b).values(), strict=True):
        assert x.sharding == target.sharding, path  # mesh B's NamedSharding, not mesh A's
        np.testing.assert_array_equal(np.asarray(x), np.asarray(_flat(saved_p)[path]), err_msg=path)
    for x, target, saved in zip(jax.tree.leaves(opt_state), jax.tree.leaves(o_b), jax.tree.leaves(saved_o),
                                strict=True):
        assert x.sharding == target.sharding
        np.testing.assert_array_equal(np.asarray(x), np.asarray(saved))
    assert _flat(params)["units/blocks/0/mlp/up/kernel"].sharding.spec == shard_b.params["units"]["blocks"][0][
        "mlp"]["up"]["kernel"].spec

    # steps 3-4 on mesh B equal the uninterrupted run on mesh A
    _, _, rest_b = run_steps(MESH_B, params, opt_state, first=2, last=4)
    assert len(first) == 2 and len(rest_b) == len(rest_a) == 2
    for i, (a, b) in enumerate(zip(rest_a, rest_b, strict=True)):
        assert_close(b["loss"], a["loss"], "float32", f"step {i + 3} loss")
        assert_close(b["grad_norm"], a["grad_norm"], "float32", f"step {i + 3} grad_norm")
