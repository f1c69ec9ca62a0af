"""The per-device parameter / memory calculator (abstract shapes and an AbstractMesh; no devices)."""

from __future__ import annotations

import pytest

from mc_jax.configs_util import load_preset
from mc_jax.models import abstract_model, count_params
from mc_jax.parallel import MeshConfig
from tools.device_memory import device_memory, main


@pytest.mark.parametrize("preset", ["paper_760m", "paper_1_3b"])
def test_fsdp_divides_the_state_by_the_devices(preset):
    model = load_preset(preset)
    one = device_memory(model, MeshConfig(), 1)
    assert one.total_params == one.params_per_device == count_params(abstract_model(model))
    assert one.total_bytes == 16 * one.total_params  # float32 params + grads + two Adam moments
    for n in (8, 64):
        m = device_memory(model, MeshConfig(fsdp=-1), n)
        assert m.mesh == (1, n, 1) and m.total_params == one.total_params
        # everything but the small replicated tensors (norm scales, gate biases, conv kernels) is split n ways
        assert m.params_per_device == m.replicated_params + (m.total_params - m.replicated_params) // n
        assert m.replicated_params < 0.001 * m.total_params
        assert m.params_per_device < 1.05 * m.total_params / n  # ~1/n: the replicated part is tiny
        assert m.total_bytes == 16 * m.params_per_device


def test_data_parallel_replicates_and_tensor_parallel_splits():
    model = load_preset("paper_1_3b")
    dp = device_memory(model, MeshConfig(data=-1), 8)
    assert dp.params_per_device == dp.total_params
    tp = device_memory(model, MeshConfig(tensor=-1), 8)  # 8 heads over 8 devices
    assert tp.params_per_device < 0.13 * tp.total_params
    with pytest.raises(ValueError, match="mesh.tensor=16 does not divide model.num_heads=8"):
        device_memory(model, MeshConfig(tensor=-1), 16)


def test_cli_prints_the_table(capsys):
    assert main(["paper_760m", "--devices", "8"]) == 0
    out = capsys.readouterr().out
    assert "paper_760m" in out and "1,8,1" in out and "921,700,992" in out
