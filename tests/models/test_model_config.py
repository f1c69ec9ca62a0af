"""Config validation, dotted overrides, dict round trips and presets."""

import dataclasses

import pytest

from mc_jax.config import MixerConfig, ModelConfig
from mc_jax.configs_util import apply_overrides, from_dict, load_preset, parse_value, to_dict


@pytest.mark.parametrize("kwargs,match", [
    (dict(memory="lstm"), "mixer.memory='lstm' is not one of"),
    (dict(kind="rnn"), "mixer.kind='rnn'"),
    (dict(aggregation="max"), "mixer.aggregation='max'"),
    (dict(segmentation="tree"), "mixer.segmentation"),
    (dict(init="zeros"), "mixer.init"),
    (dict(pool="max"), "mixer.pool"),
    (dict(value_map="tanh"), "mixer.value_map='tanh' is not one of"),
    (dict(output_norm="no"), "mixer.output_norm must be True or False"),
    (dict(output_gate=0), "mixer.output_gate must be True or False"),
    (dict(aggregation="ssc"), "needs mixer.top_k"),
    (dict(aggregation="grm", top_k=2), "top_k is only used by aggregation='ssc'"),
    (dict(aggregation="ssc", top_k=0), "top_k must be a positive"),
    (dict(memory="titans", segment_size=12, chunk_size=8), "must be a multiple of mixer.chunk_size=8"),
    (dict(segment_size=0), "segment_size must be a positive"),
    (dict(segment_size=4.0), "segment_size must be a positive int"),
    (dict(kind="sliding_window"), "needs mixer.window"),
    (dict(memory="delta", gates=("alpha",)), "not gates of memory 'delta'"),
    (dict(memory="titans", gates=("theta",)), r"needs gates \['eta'\]"),
])
def test_mixer_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixerConfig(**kwargs)


def test_valid_mixer_configs():
    assert MixerConfig(aggregation="ssc", top_k=2).top_k == 2
    assert MixerConfig(memory="titans", segment_size=12).inner_chunk == 12  # largest divisor <= 16
    assert MixerConfig(memory="titans", segment_size=64).inner_chunk == 16
    assert MixerConfig(memory="linear").inner_chunk is None
    assert MixerConfig(memory="delta").gate_names == ("beta", "log_decay")
    # the base layer has one segment: the segment / chunk rule does not apply to it
    MixerConfig(kind="none", memory="titans", segment_size=12, chunk_size=8)


@pytest.mark.parametrize("kwargs,match", [
    (dict(d_model=30, num_heads=4), "not divisible by num_heads"),
    (dict(num_layers=3, pattern=("mc", "attention")), "not a multiple of len"),
    (dict(pattern=("mc", "lstm")), "pattern entry='lstm'"),
    (dict(mixer=MixerConfig(memory="titans", key_dim=16, value_dim=32)), "needs key_dim == value_dim"),
    (dict(mixer=MixerConfig(kind="none", memory="dla", segment_size=12, chunk_size=8), pattern=("none", "mc")),
     "multiple of mixer.chunk_size"),
    (dict(dtype="float8"), "dtype='float8'"),
    (dict(vocab_size=0), "vocab_size must be a positive"),
    (dict(mlp=1), "mlp must be True or False"),
    (dict(mixer={"memory": "linear"}), "mixer must be a MixerConfig"),
])
def test_model_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_model_config_derived_shapes():
    cfg = ModelConfig(d_model=96, num_heads=4, num_layers=6, pattern=("mc", "mc", "attention"))
    assert cfg.layer_kinds == ("mc", "mc", "attention") * 2 and cfg.num_units == 2
    assert cfg.key_dim == cfg.value_dim == 24 and cfg.hidden_dim == 256
    assert ModelConfig(mixer=MixerConfig(memory="delta", key_dim=16, value_dim=32)).value_dim == 32


def test_overrides_parse_field_types():
    cfg = apply_overrides(ModelConfig(), [
        "mixer.aggregation=ssc", "mixer.top_k=2", "num_layers=6", "norm_eps=1e-5", "tie_embeddings=false",
        "mlp_hidden=none", "pattern=mc,mc,attention", "mixer.gates=beta", "mixer.memory=delta", "--remat=yes",
    ])
    assert cfg.mixer.aggregation == "ssc" and cfg.mixer.top_k == 2 and cfg.num_layers == 6
    assert cfg.norm_eps == 1e-5 and cfg.tie_embeddings is False and cfg.mlp_hidden is None and cfg.remat
    assert cfg.pattern == ("mc", "mc", "attention") and cfg.mixer.gates == ("beta",)
    assert apply_overrides(cfg, ["mixer.gates=null"]).mixer.gates is None
    assert parse_value("(a, b)", tuple[str, ...]) == ("a", "b") and parse_value("()", tuple[str, ...]) == ()
    assert parse_value("none", int | None) is None and parse_value("3", int | None) == 3
    # a root config holding the model: the paths the CLIs use
    Root = dataclasses.make_dataclass("Root", [("model", ModelConfig), ("steps", int)], frozen=True)
    root = apply_overrides(Root(ModelConfig(), 10), ["model.mixer.memory=titans", "steps=20"])
    assert root.model.mixer.memory == "titans" and root.steps == 20


@pytest.mark.parametrize("override,match", [
    ("mixer.agregation=ssc", r"'agregation' is not a field of section 'mixer\.'"),
    ("layers=3", "'layers' is not a field of the root"),
    ("num_layers=three", "expected an int"),
    ("tie_embeddings=maybe", "expected a boolean"),
    ("mixer=grm", "is a section"),
    ("num_layers.x=1", "is a value, not a section"),
    ("num_layers", "must look like key.path=value"),
    ("mixer.aggregation=ssc", "needs mixer.top_k"),  # validated after all overrides
])
def test_override_errors(override, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(ModelConfig(), [override])


def test_dict_round_trip_and_presets():
    for name in ("tiny", "small", "paper_760m", "paper_1_3b"):
        cfg = load_preset(name)
        assert isinstance(cfg, ModelConfig)
        assert from_dict(ModelConfig, to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        from_dict(ModelConfig, {"d_model": 8, "width": 3})
    with pytest.raises(ValueError, match="no preset 'huge'"):
        load_preset("huge")
