"""Typed config: golden config.json -> exact tiny architecture, presets, strict errors, overrides, JSON."""

import dataclasses
import json
import pathlib

import pytest
import yaml

from vxl_jax.config import (
    TINY_MODEL, BeaconConfig, ConfigError, LMConfig, MeshConfig, ProjectorConfig, RuntimeConfig, VideoXLConfig,
    VisionConfig, apply_overrides, from_hf_config, load_yaml_sections, tiny_config, to_hf_config, vision_to_hf,
)
from vxl_jax.train.config import from_sections

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _golden_cfg(golden_dir):
    d = golden_dir / "tiny_videoxl"
    return from_hf_config(d / "config.json", vision=d / "vision_tower_config.json")


def _hf_dict(golden_dir):
    return json.loads((golden_dir / "tiny_videoxl" / "config.json").read_text())


def test_golden_config_gives_tiny_architecture(golden_dir):
    """golden README section 2: LM 800/48/96, 2 layers, 4 heads, 2 KV, Dh 12; CLIP 336/14, 24/72, 2 layers."""
    cfg = _golden_cfg(golden_dir)
    assert cfg.lm == LMConfig(
        vocab_size=800, hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
        rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=None,
    )
    assert cfg.lm.head_dim == 12 and cfg.lm.image_token_id == 799
    assert cfg.vision == VisionConfig(
        image_size=336, patch_size=14, num_channels=3, hidden_size=24, intermediate_size=72, num_layers=2,
        num_heads=4, layer_norm_eps=1e-5, hidden_act="quick_gelu", select_layer=-2, select_feature="patch",
    )
    assert cfg.vision.grid == 24 and cfg.vision.num_patches == 576 and cfg.vision.head_dim == 6
    assert cfg.vision.layers_used == 1  # hidden_states[-2] of 2 layers = output of encoder layer 0
    assert cfg.projector == ProjectorConfig(type="mlp2x_gelu", in_features=24, pool_stride=2, pool_mode="average")
    assert cfg.beacon == BeaconConfig(
        window=1440, stride=1440, ratios=(2, 4, 8), ratio_mix="step-random", pos="interleave",
        attn="full-coverage", params=("q", "k", "v"), sink_size=0, accum=True, embed_init="eos",
        attend_prev=True, parallel_window=1, tokens_per_frame=144,
    )
    assert cfg.beacon.frames_per_window == 10


def test_hf_round_trip(golden_dir):
    cfg = _golden_cfg(golden_dir)
    assert from_hf_config(to_hf_config(cfg), vision=vision_to_hf(cfg.vision)) == cfg
    big = VideoXLConfig.from_yaml(CONFIGS / "videoxl_7b.yaml")
    back = from_hf_config(to_hf_config(big), vision=vision_to_hf(big.vision), runtime=big.runtime)
    assert back == big
    # No vision config given: the built-in CLIP ViT-L/14-336 preset.
    hf = to_hf_config(big)
    assert from_hf_config(hf, runtime=big.runtime) == big


@pytest.mark.parametrize("change,needle", [
    ({"model_type": "llama"}, "model_type"),
    ({"mystery_field": 1}, "mystery_field"),
    ({"beacon_stride": 720}, "stride"),
    ({"beacon_ratio": [2, 7]}, "ratio 7"),
    ({"beacon_pos": "append"}, "beacon.pos"),
    ({"beacon_sink_size": 4}, "sink_size"),
    ({"mm_hidden_size": 32}, "projector.in_features"),
    ({"num_key_value_heads": 3}, "num_kv_heads"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"head_dim": 16}, "head_dim"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings"),
    ({"mm_projector_type": "linear"}, "mm_projector_type"),
])
def test_hf_contradictions_raise(golden_dir, change, needle):
    hf = _hf_dict(golden_dir)
    hf.update(change)
    vis = golden_dir / "tiny_videoxl" / "vision_tower_config.json"
    with pytest.raises(ConfigError, match=needle):
        from_hf_config(hf, vision=vis)


def test_the_tiny_model_is_defined_once():
    """configs/tiny.yaml's model section is the package's TINY_MODEL written out (the package must work from a wheel
    without configs/; the embedded demo model is tiny_config()); configs/train_tiny.yaml is the same model with
    56 px frames and 40-token windows."""
    raw = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())["model"]
    assert raw == TINY_MODEL, ("configs/tiny.yaml `model:` differs from vxl_jax.config.tiny.TINY_MODEL; write it as\n"
                               + yaml.safe_dump({"model": TINY_MODEL}, default_flow_style=None, sort_keys=False))
    tiny = tiny_config()
    assert VideoXLConfig.from_yaml(CONFIGS / "tiny.yaml") == tiny
    micro = tiny.replace(vision=dataclasses.replace(tiny.vision, image_size=56),
                         beacon=dataclasses.replace(tiny.beacon, window=40, stride=40, ratios=(2, 4, 8), tokens_per_frame=4))
    assert VideoXLConfig.from_yaml(CONFIGS / "train_tiny.yaml") == micro
    assert tiny_config("bfloat16").runtime.compute_dtype == "bfloat16"


def test_yaml_presets_load():
    tiny = VideoXLConfig.from_yaml(CONFIGS / "tiny.yaml")
    assert (tiny.lm.hidden_size, tiny.lm.num_layers, tiny.vision.hidden_size) == (64, 2, 32)
    big = VideoXLConfig.from_yaml(CONFIGS / "videoxl_7b.yaml")
    assert (big.lm.vocab_size, big.lm.hidden_size, big.lm.intermediate_size) == (152064, 3584, 18944)
    assert (big.lm.num_layers, big.lm.num_heads, big.lm.num_kv_heads, big.lm.head_dim) == (28, 28, 4, 128)
    assert (big.vision.hidden_size, big.vision.num_layers, big.vision.num_heads) == (1024, 24, 16)
    assert big.beacon.ratios == (2, 4, 8) and big.runtime.param_dtype == "bfloat16"
    assert big.runtime.mesh == MeshConfig(data=1, fsdp=-1, tensor=1)
    for path in sorted(CONFIGS.glob("*.yaml")):  # every preset in the repo loads
        VideoXLConfig.from_yaml(path)


def test_unknown_fields_are_named(tmp_path):
    with pytest.raises(ConfigError, match="num_layerz"):
        VideoXLConfig.from_dict({"lm": {"num_layerz": 3}})
    with pytest.raises(ConfigError, match="visoin"):
        VideoXLConfig.from_dict({"visoin": {}})
    with pytest.raises(ConfigError, match="mesh.*tensr|tensr"):
        VideoXLConfig.from_dict({"runtime": {"mesh": {"tensr": 2}}})
    p = tmp_path / "bad.yaml"
    p.write_text("model: {}\ntrian: {steps: 3}\n")
    with pytest.raises(ConfigError, match="trian"):
        load_yaml_sections(p)
    with pytest.raises(ConfigError, match="not found"):
        VideoXLConfig.from_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize("d,needle", [
    ({"projector": {"in_features": 48}}, "projector.in_features"),
    ({"beacon": {"window": 1440, "stride": 1000}}, "stride"),
    ({"beacon": {"ratios": [2, 7]}}, "ratio 7"),
    ({"beacon": {"ratios": []}}, "ratios"),
    ({"beacon": {"window": 1000, "stride": 1000}}, "whole number of frames"),
    ({"beacon": {"accum": False}}, "accum"),
    ({"lm": {"num_kv_heads": 5}}, "num_kv_heads"),
    ({"lm": {"hidden_size": 100}}, "num_heads"),
    ({"lm": {"tie_word_embeddings": True}}, "tie_word_embeddings"),
    ({"vision": {"image_size": 330}}, "patch_size"),
    ({"vision": {"select_layer": -30}}, "select_layer"),
    ({"vision": {"hidden_act": "gelu"}}, "quick_gelu"),
    ({"lm": {"num_layers": "two"}}, "lm.num_layers"),
    ({"lm": {"num_layers": True}}, "lm.num_layers"),
    ({"beacon": {"accum": "yes"}}, "beacon.accum"),
    ({"runtime": {"remat": "everything"}}, "runtime.remat"),
    ({"runtime": {"attention": "flash3"}}, "runtime.attention"),
    ({"runtime": {"param_dtype": "fp8"}}, "param_dtype"),
])
def test_contradictory_or_bad_fields_raise(d, needle):
    with pytest.raises(ConfigError, match=needle):
        VideoXLConfig.from_dict(d)


def test_overrides():
    cfg = VideoXLConfig.from_yaml(CONFIGS / "tiny.yaml", [
        "model.lm.num_layers=3", "model.beacon.ratios=[2, 4]", "model.runtime.remat=full",
        "model.runtime.mesh.tensor=2", "model.lm.rms_norm_eps=1e-5", "model.lm.rope_theta=1e4",
        "model.lm.eos_token_id=[2, 3]",
    ])
    assert cfg.lm.num_layers == 3 and cfg.beacon.ratios == (2, 4) and cfg.runtime.remat == "full"
    assert cfg.runtime.mesh.tensor == 2 and cfg.lm.rms_norm_eps == 1e-5 and cfg.lm.rope_theta == 1e4
    assert cfg.lm.eos_ids == (2, 3)
    assert cfg.lm.hidden_size == 64  # untouched fields keep the preset's value
    d = apply_overrides({"train": {"lr": 1.0}}, ["train.lr=0.5", "train.new.depth=2"])
    assert d == {"train": {"lr": 0.5, "new": {"depth": 2}}}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["model.lm.num_layers"])
    with pytest.raises(ConfigError, match=r"in lm: \[.num_layerz.\]"):
        VideoXLConfig.from_yaml(CONFIGS / "tiny.yaml", ["model.lm.num_layerz=3"])
    with pytest.raises(ConfigError, match="ratio 7"):
        VideoXLConfig.from_yaml(CONFIGS / "tiny.yaml", ["model.beacon.ratios=[7]"])


def test_json_round_trip(tmp_path, golden_dir):
    for cfg in (VideoXLConfig.from_yaml(CONFIGS / "videoxl_7b.yaml"),
                VideoXLConfig.from_yaml(CONFIGS / "tiny.yaml", ["model.lm.eos_token_id=[2, 3]"]),
                _golden_cfg(golden_dir).with_runtime(mesh=MeshConfig(data=2, fsdp=2, tensor=2), remat="minimal")):
        p = tmp_path / "cfg.json"
        cfg.to_json(p)
        back = VideoXLConfig.from_json(p)
        assert back == cfg
        assert isinstance(back.beacon.ratios, tuple) and isinstance(back.runtime.mesh, MeshConfig)


def test_mesh_shape():
    assert MeshConfig().shape(8) == (1, 8, 1)
    assert MeshConfig(data=2, fsdp=-1, tensor=2).shape(8) == (2, 2, 2)
    assert MeshConfig(data=1, fsdp=2, tensor=4).shape(8) == (1, 2, 4)
    with pytest.raises(ConfigError, match="at most one"):
        MeshConfig(data=-1, fsdp=-1).shape(8)
    with pytest.raises(ConfigError, match="does not divide"):
        MeshConfig(data=3, fsdp=-1).shape(8)
    with pytest.raises(ConfigError, match="needs 4 devices"):
        MeshConfig(data=2, fsdp=2, tensor=1).shape(8)
    assert RuntimeConfig().mesh == MeshConfig()


def test_transformers5_rope_parameters(golden_dir):
    """transformers >= 5 writes RoPE settings under rope_parameters; scaled RoPE is refused."""
    d = json.loads((golden_dir / "tiny_videoxl" / "config.json").read_text())
    vision = golden_dir / "tiny_videoxl" / "vision_tower_config.json"
    theta = d.pop("rope_theta")
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": theta / 10}
    assert from_hf_config(d, vision).lm.rope_theta == theta / 10
    d["rope_parameters"] = {"rope_type": "yarn", "rope_theta": theta, "factor": 4.0}
    with pytest.raises(ConfigError, match="rope_parameters"):
        from_hf_config(d, vision)


def test_infer_section_is_refused_with_a_reason(tmp_path):
    """The ``infer`` section was accepted and read by nothing; now it is an error that says where settings go."""
    p = tmp_path / "p.yaml"
    p.write_text("model: {}\ninfer: {ratio: 8}\n")
    with pytest.raises(ConfigError, match="infer.*command line"):
        load_yaml_sections(p)


def test_training_sections_use_the_one_strict_builder():
    t, d, c = from_sections({"train": {"steps": 3, "ratios": [2, 8]}, "data": {"video_fps": 2},
                             "checkpoint": {"init_from": None}})
    assert (t.steps, t.ratios, d.video_fps, c.init_from) == (3, (2, 8), 2.0, None)
    with pytest.raises(ConfigError, match="train.steps: expected an integer"):
        from_sections({"train": {"steps": "many"}})
    with pytest.raises(ConfigError, match="unknown field.*data.*frame_upbound"):
        from_sections({"data": {"frame_upbound": 3}})
    with pytest.raises(ConfigError, match="train.trainable"):
        from_sections({"train": {"trainable": "everything"}})
