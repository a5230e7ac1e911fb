"""Hugging Face ``config.json`` (LLaVA-Qwen / Qwen2 + a CLIP vision config) to our config and back."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from vxl_jax.config.coerce import build
from vxl_jax.config.errors import ConfigError
from vxl_jax.config.schema import BeaconConfig, LMConfig, ProjectorConfig, RuntimeConfig, VideoXLConfig, VisionConfig


# Fields of a LLaVA-Qwen / Qwen2 config.json that from_hf_config reads (each checked or converted below).
_HF_READ = {
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "rope_theta", "rope_parameters", "rope_scaling", "rms_norm_eps", "hidden_act",
    "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "head_dim",
    "use_sliding_window", "mm_projector_type", "mm_hidden_size", "mm_spatial_pool_stride", "mm_spatial_pool_mode",
    "mm_vision_select_layer", "mm_vision_select_feature",
}
# Fields that carry no information for this model: training options, the LLaVA image/tiling options the
# release fixes, file paths, bookkeeping. Accepted and ignored; any other field is an error.
_HF_NO_EFFECT = {
    # bookkeeping
    "architectures", "_name_or_path", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "_attn_implementation", "attn_implementation", "initializer_range", "attention_dropout",
    # sliding window (rejected above when enabled) and per-layer attention types
    "sliding_window", "max_window_layers", "layer_types",
    # LLaVA image / video options fixed by the release (docs/algorithm.md §1)
    "image_aspect_ratio", "image_grid_pinpoints", "image_crop_resolution", "image_split_resolution",
    "mm_patch_merge_type", "mm_resampler_type", "mm_spatial_pool_out_channels", "mm_use_im_patch_token",
    "mm_use_im_start_end", "mm_newline_position", "add_faster_video", "faster_token_stride", "s2",
    # paths of the vision tower (its config comes separately) and training-time options
    "mm_vision_tower", "vision_tower_pretrained", "delay_load", "unfreeze_mm_vision_tower", "use_mm_proj",
    "tune_mm_mlp_adapter", "mm_projector_lr", "mm_vision_tower_lr", "mm_tunable_parts",
    "tokenizer_model_max_length", "tokenizer_padding_side", "use_pos_skipping", "pos_skipping_range",
    # ignored by the original as well
    "enable_beacon",
}
_BEACON_KEYS = {
    "beacon_window": "window", "beacon_stride": "stride", "beacon_ratio": "ratios",
    "beacon_ratio_mix": "ratio_mix", "beacon_pos": "pos", "beacon_attn": "attn",
    "beacon_param": "params", "beacon_sink_size": "sink_size", "beacon_accum": "accum",
    "beacon_embed_init": "embed_init", "beacon_attend_prev": "attend_prev",
    "beacon_parallel_window": "parallel_window",
}

CLIP_VIT_L14_336 = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "image_size": 336, "patch_size": 14, "num_channels": 3, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu",
}


def vision_from_hf(clip_cfg: Mapping[str, Any], select_layer: int = -2, select_feature: str = "patch") -> VisionConfig:
    """CLIPVisionConfig-style dict (or a full CLIPConfig with ``vision_config``) -> VisionConfig."""
    c = dict(clip_cfg.get("vision_config", clip_cfg))
    return VisionConfig(
        image_size=int(c.get("image_size", 224)), patch_size=int(c.get("patch_size", 32)),
        num_channels=int(c.get("num_channels", 3)), hidden_size=int(c["hidden_size"]),
        intermediate_size=int(c["intermediate_size"]), num_layers=int(c["num_hidden_layers"]),
        num_heads=int(c["num_attention_heads"]), layer_norm_eps=float(c.get("layer_norm_eps", 1e-5)),
        hidden_act=c.get("hidden_act", "quick_gelu"), select_layer=select_layer, select_feature=select_feature,
    )


def from_hf_config(
    hf: Mapping[str, Any] | str | os.PathLike,
    vision: Mapping[str, Any] | str | os.PathLike | None = None,
    runtime: RuntimeConfig | None = None,
) -> VideoXLConfig:
    """Build our config from a released checkpoint's ``config.json`` (+ a CLIP vision config).

    ``vision`` is a CLIP (vision) config dict or path; when None, the built-in
    ``openai/clip-vit-large-patch14-336`` preset is used.
    """
    if not isinstance(hf, Mapping):
        with open(hf) as f:
            hf = json.load(f)
    if vision is not None and not isinstance(vision, Mapping):
        with open(vision) as f:
            vision = json.load(f)
    hf = _checked(dict(hf))
    select_layer = int(hf.get("mm_vision_select_layer", -2))
    select_feature = hf.get("mm_vision_select_feature", "patch")
    vis = vision_from_hf(vision if vision is not None else CLIP_VIT_L14_336, select_layer, select_feature)
    mm_hidden = int(hf.get("mm_hidden_size", vis.hidden_size))
    projector = ProjectorConfig(in_features=mm_hidden, pool_stride=int(hf.get("mm_spatial_pool_stride", 2)))
    return VideoXLConfig(vision=vis, projector=projector, lm=_lm_from_hf(hf), beacon=_beacon_from_hf(hf),
                         runtime=runtime or RuntimeConfig())


def _checked(hf: dict) -> dict:
    """Refuse unknown fields and settings this port does not implement; -> hf with ``rope_theta`` filled in from
    transformers-5 ``rope_parameters``."""
    model_type = hf.get("model_type")
    if model_type not in ("llava_qwen", "qwen2"):
        raise ConfigError(f"config.json model_type must be 'llava_qwen' or 'qwen2', got {model_type!r}")
    known = _HF_READ | _HF_NO_EFFECT | set(_BEACON_KEYS)
    unknown = sorted(k for k in hf if k not in known)
    if unknown:
        raise ConfigError(f"config.json has field(s) this port does not understand: {unknown}")
    if hf.get("use_sliding_window"):
        raise ConfigError("config.json: use_sliding_window=true is not supported (Video-XL does not use it)")
    rope_params = hf.get("rope_parameters")  # transformers >= 5 writes RoPE settings here
    if rope_params:
        if rope_params.get("rope_type", "default") != "default":
            raise ConfigError(f"config.json: rope_parameters {rope_params!r} is not supported (plain RoPE only)")
        if "rope_theta" in rope_params:
            hf.setdefault("rope_theta", rope_params["rope_theta"])
    if hf.get("rope_scaling") not in (None, {}):
        # The original forces rope_scaling to None; honouring it would change the model.
        raise ConfigError(f"config.json: rope_scaling {hf['rope_scaling']!r} is not supported (the original forces None)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"config.json: hidden_act must be 'silu', got {hf['hidden_act']!r}")
    if "mm_projector_type" in hf and hf["mm_projector_type"] != "mlp2x_gelu":
        raise ConfigError(f"config.json: mm_projector_type {hf['mm_projector_type']!r} is not supported")
    if hf.get("mm_spatial_pool_mode", "average") != "average":
        raise ConfigError(f"config.json: mm_spatial_pool_mode {hf['mm_spatial_pool_mode']!r} is not supported")
    head_dim = hf["hidden_size"] // hf["num_attention_heads"]
    if "head_dim" in hf and hf["head_dim"] not in (None, head_dim):
        raise ConfigError(f"config.json: head_dim {hf['head_dim']} != hidden_size/num_attention_heads {head_dim}")
    return hf


def _lm_from_hf(hf: dict) -> LMConfig:
    eos = hf.get("eos_token_id")
    return LMConfig(
        vocab_size=int(hf["vocab_size"]), hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]), num_layers=int(hf["num_hidden_layers"]),
        num_heads=int(hf["num_attention_heads"]),
        num_kv_heads=int(hf.get("num_key_value_heads", hf["num_attention_heads"])),
        rope_theta=float(hf.get("rope_theta", 10000.0)), rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        pad_token_id=hf.get("pad_token_id"),
    )


def _beacon_from_hf(hf: dict) -> BeaconConfig:
    kwargs = {ours: tuple(hf[hk]) if isinstance(hf[hk], list) else hf[hk]
              for hk, ours in _BEACON_KEYS.items() if hk in hf}
    return build(BeaconConfig, kwargs, "beacon")


def to_hf_config(cfg: VideoXLConfig) -> dict:
    """Inverse of :func:`from_hf_config` (the fields the port understands), for ``--to-torch``."""
    lm, b = cfg.lm, cfg.beacon
    eos = list(lm.eos_token_id) if isinstance(lm.eos_token_id, tuple) else lm.eos_token_id
    return {
        "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen", "hidden_act": "silu",
        "vocab_size": lm.vocab_size, "hidden_size": lm.hidden_size, "intermediate_size": lm.intermediate_size,
        "num_hidden_layers": lm.num_layers, "num_attention_heads": lm.num_heads,
        "num_key_value_heads": lm.num_kv_heads, "rope_theta": lm.rope_theta, "rms_norm_eps": lm.rms_norm_eps,
        "max_position_embeddings": lm.max_position_embeddings, "tie_word_embeddings": False,
        "bos_token_id": lm.bos_token_id, "eos_token_id": eos, "pad_token_id": lm.pad_token_id,
        "rope_scaling": None, "use_sliding_window": False,
        "beacon_window": b.window, "beacon_stride": b.stride, "beacon_ratio": list(b.ratios),
        "beacon_ratio_mix": b.ratio_mix, "beacon_pos": b.pos, "beacon_attn": b.attn,
        "beacon_param": list(b.params), "beacon_sink_size": b.sink_size, "beacon_accum": b.accum,
        "beacon_embed_init": b.embed_init, "beacon_attend_prev": b.attend_prev,
        "beacon_parallel_window": b.parallel_window, "enable_beacon": True,
        "mm_projector_type": cfg.projector.type, "mm_hidden_size": cfg.projector.in_features,
        "mm_vision_select_layer": cfg.vision.select_layer, "mm_vision_select_feature": cfg.vision.select_feature,
        "mm_spatial_pool_stride": cfg.projector.pool_stride, "mm_spatial_pool_mode": "average",
        "mm_resampler_type": "spatial_pool", "mm_patch_merge_type": "unires",
        "torch_dtype": cfg.runtime.param_dtype,
    }


def vision_to_hf(v: VisionConfig) -> dict:
    return {
        "architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model", "hidden_act": v.hidden_act,
        "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size, "num_hidden_layers": v.num_layers,
        "num_attention_heads": v.num_heads, "image_size": v.image_size, "patch_size": v.patch_size,
        "num_channels": v.num_channels, "layer_norm_eps": v.layer_norm_eps,
    }
