"""Typed configuration for Video-XL.

Sections: ``vision`` (CLIP ViT), ``projector`` (mlp2x_gelu + 2x2 pool), ``lm`` (Qwen2 + beacon
parameters), ``beacon`` (visual-summary-token compression) and ``runtime`` (dtypes, attention
backend, remat policy, mesh). Presets live in ``configs/*.yaml``; a released checkpoint's
``config.json`` (model_type ``llava_qwen`` or ``qwen2``) converts with :func:`from_hf_config`.

Every loader is strict: unknown keys and contradictory values raise :class:`ConfigError` naming
the offending field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A configuration field is unknown, missing, or contradicts another field."""


# --------------------------------------------------------------------------------------------
# Sections


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT vision tower (pre-LN, quick_gelu). Output: layer ``select_layer``, CLS dropped."""

    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    select_layer: int = -2
    select_feature: str = "patch"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def layers_used(self) -> int:
        """How many encoder layers contribute to the selected hidden state."""
        # HF hidden_states has num_layers + 1 entries; entry 0 is the embedding output.
        return self.select_layer % (self.num_layers + 1)

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(f"vision.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"vision.hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.hidden_act != "quick_gelu":
            raise ConfigError(f"vision.hidden_act must be 'quick_gelu' (CLIP), got {self.hidden_act!r}")
        if self.select_feature not in ("patch", "cls_patch"):
            raise ConfigError(f"vision.select_feature must be 'patch' or 'cls_patch', got {self.select_feature!r}")
        if not -(self.num_layers + 1) <= self.select_layer <= self.num_layers:
            raise ConfigError(f"vision.select_layer {self.select_layer} out of range for {self.num_layers} layers")


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """``mlp2x_gelu``: Linear(in→out) · GELU(erf) · Linear(out→out); then a 2x2 average pool."""

    type: str = "mlp2x_gelu"
    in_features: int = 1024
    pool_stride: int = 2
    pool_mode: str = "average"

    def validate(self) -> None:
        if self.type != "mlp2x_gelu":
            raise ConfigError(f"projector.type must be 'mlp2x_gelu', got {self.type!r}")
        if self.pool_mode != "average":
            raise ConfigError(f"projector.pool_mode must be 'average', got {self.pool_mode!r}")
        if self.pool_stride < 1:
            raise ConfigError("projector.pool_stride must be >= 1")


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Qwen2 decoder (GQA with q/k/v biases, SwiGLU, RMSNorm, RoPE) plus beacon projections."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 151643
    eos_token_id: int | tuple[int, ...] | None = 151645
    pad_token_id: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def image_token_id(self) -> int:
        """Id the original writes at visual positions (never looked up in a compressed window)."""
        return self.vocab_size - 1

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def validate(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"lm.hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"lm.num_heads {self.num_heads} not divisible by num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"lm head_dim {self.head_dim} must be even for RoPE")
        if self.tie_word_embeddings:
            raise ConfigError("lm.tie_word_embeddings=True is not supported: Video-XL has an untied lm_head")


@dataclasses.dataclass(frozen=True)
class BeaconConfig:
    """Visual Summary Token ("beacon") compression, release path: interleave + full-coverage."""

    window: int = 1440
    stride: int = 1440
    ratios: tuple[int, ...] = (2, 4, 8)
    ratio_mix: str = "step-random"
    pos: str = "interleave"
    attn: str = "full-coverage"
    params: tuple[str, ...] = ("q", "k", "v")
    sink_size: int = 0
    accum: bool = True
    embed_init: str = "eos"
    attend_prev: bool = True
    parallel_window: int = 1
    tokens_per_frame: int = 144

    @property
    def frames_per_window(self) -> int:
        return self.window // self.tokens_per_frame

    def check_ratio(self, ratio: int) -> None:
        if ratio <= 0:
            raise ConfigError(
                f"compression ratio {ratio} is not positive; a ratio is a positive integer that divides the beacon "
                f"window of {self.window} tokens (e.g. 2, 4, 8, 12, 16)"
            )
        if self.window % ratio:
            raise ConfigError(
                f"compression ratio {ratio} does not divide the beacon window of {self.window} tokens; "
                f"valid ratios divide {self.window} (e.g. 2, 4, 8, 12, 16)"
            )

    def validate(self) -> None:
        if self.window != self.stride:
            raise ConfigError(f"beacon.window ({self.window}) must equal beacon.stride ({self.stride})")
        if self.pos != "interleave":
            raise ConfigError(f"beacon.pos must be 'interleave' (release path), got {self.pos!r}")
        if self.attn != "full-coverage":
            raise ConfigError(f"beacon.attn must be 'full-coverage' (release path), got {self.attn!r}")
        if tuple(sorted(self.params)) != ("k", "q", "v"):
            raise ConfigError(f"beacon.params must be [q, k, v] (release checkpoint), got {list(self.params)}")
        if self.sink_size != 0:
            raise ConfigError("beacon.sink_size must be 0 when the prefix is kept as sink")
        if not self.accum:
            raise ConfigError("beacon.accum must be true (release path keeps every window's beacons)")
        if self.parallel_window != 1:
            raise ConfigError("beacon.parallel_window must be 1")
        if self.ratio_mix not in ("step-random", "fixed"):
            raise ConfigError(f"beacon.ratio_mix must be 'step-random' or 'fixed', got {self.ratio_mix!r}")
        if self.embed_init not in ("eos", "bos"):
            raise ConfigError(f"beacon.embed_init must be 'eos' or 'bos', got {self.embed_init!r}")
        if not self.ratios:
            raise ConfigError("beacon.ratios must not be empty")
        if self.window % self.tokens_per_frame:
            raise ConfigError(
                f"beacon.window {self.window} is not a whole number of frames of {self.tokens_per_frame} tokens"
            )
        for r in self.ratios:
            self.check_ratio(r)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh ``(data, fsdp, tensor)``; -1 in one axis means "all remaining devices"."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        dims = [self.data, self.fsdp, self.tensor]
        if dims.count(-1) > 1:
            raise ConfigError("mesh: at most one axis may be -1")
        known = 1
        for d in dims:
            if d != -1:
                if d < 1:
                    raise ConfigError(f"mesh axis sizes must be >= 1 or -1, got {dims}")
                known *= d
        if -1 in dims:
            if num_devices % known:
                raise ConfigError(f"mesh {dims} does not divide {num_devices} devices")
            dims[dims.index(-1)] = num_devices // known
        if dims[0] * dims[1] * dims[2] != num_devices:
            raise ConfigError(f"mesh {tuple(dims)} needs {dims[0] * dims[1] * dims[2]} devices, have {num_devices}")
        return tuple(dims)


REMAT_POLICIES = ("none", "full", "minimal", "save_qkv_proj", "save_dot_except_mlp")
ATTENTION_BACKENDS = ("xla", "reference", "pallas", "cudnn", "dot_product")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Numerics and execution: storage/compute dtypes, attention backend, remat, mesh."""

    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    attention: str = "xla"
    remat: str = "none"
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)

    def validate(self) -> None:
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"runtime.{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ConfigError(f"runtime.attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"runtime.remat must be one of {REMAT_POLICIES}, got {self.remat!r}")


@dataclasses.dataclass(frozen=True)
class VideoXLConfig:
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    projector: ProjectorConfig = dataclasses.field(default_factory=ProjectorConfig)
    lm: LMConfig = dataclasses.field(default_factory=LMConfig)
    beacon: BeaconConfig = dataclasses.field(default_factory=BeaconConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        for section in (self.vision, self.projector, self.lm, self.beacon, self.runtime):
            section.validate()
        if self.projector.in_features != self.vision.hidden_size:
            raise ConfigError(
                f"projector.in_features ({self.projector.in_features}) != vision.hidden_size "
                f"({self.vision.hidden_size})"
            )
        if self.vision.grid % self.projector.pool_stride:
            raise ConfigError(f"vision grid {self.vision.grid} not divisible by pool stride {self.projector.pool_stride}")
        pooled = (self.vision.grid // self.projector.pool_stride) ** 2
        if pooled != self.beacon.tokens_per_frame:
            raise ConfigError(
                f"beacon.tokens_per_frame ({self.beacon.tokens_per_frame}) != pooled tokens per frame ({pooled})"
            )

    def replace(self, **sections) -> "VideoXLConfig":
        return dataclasses.replace(self, **sections)

    def with_runtime(self, **fields) -> "VideoXLConfig":
        return dataclasses.replace(self, runtime=dataclasses.replace(self.runtime, **fields))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VideoXLConfig":
        return _build(cls, d, "")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> "VideoXLConfig":
        d = load_yaml_sections(path, overrides)
        return cls.from_dict(d["model"])

    def to_json(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "VideoXLConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))


# --------------------------------------------------------------------------------------------
# Strict dict -> dataclass


def _build(cls, d: Mapping[str, Any], where: str):
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"unknown field(s) in {where or 'config'}: {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in d.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{where or 'config'}: {e}") from e


def _coerce(tp, value, where: str):
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, where) for v in value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads "1e-6" / "1e6" (no dot) as strings; accept them as numbers.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


# --------------------------------------------------------------------------------------------
# YAML presets with key=value overrides


def apply_overrides(d: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = yaml.safe_load(raw)
    return d


def load_yaml_sections(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Read a preset. Top-level keys: ``model`` (required) and optional ``train``/``data``/``checkpoint``."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        d = yaml.safe_load(f) or {}
    apply_overrides(d, overrides)
    allowed = {"model", "train", "data", "checkpoint", "infer"}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level section(s) {unknown}; allowed: {sorted(allowed)}")
    d.setdefault("model", {})
    return d


# --------------------------------------------------------------------------------------------
# From a released checkpoint's config.json

# Fields of a LLaVA-Qwen / Qwen2 config.json that carry no information for this model (or are
# fixed by the release recipe); they are accepted and ignored.
_HF_IGNORED = {
    "architectures", "attention_dropout", "hidden_act", "initializer_range", "max_window_layers",
    "model_type", "sliding_window", "use_sliding_window", "torch_dtype", "transformers_version",
    "use_cache", "rope_scaling", "image_aspect_ratio", "image_grid_pinpoints", "mm_patch_merge_type",
    "mm_resampler_type", "mm_spatial_pool_out_channels", "mm_use_im_patch_token",
    "mm_use_im_start_end", "mm_vision_tower", "tokenizer_model_max_length", "tokenizer_padding_side",
    "unfreeze_mm_vision_tower", "use_mm_proj", "vision_tower_pretrained", "enable_beacon",
    "image_crop_resolution", "image_split_resolution", "tune_mm_mlp_adapter", "mm_projector_lr",
    "mm_vision_tower_lr", "use_pos_skipping", "pos_skipping_range", "delay_load", "s2",
    "_name_or_path", "mm_tunable_parts", "_attn_implementation", "attn_implementation", "dtype",
    "head_dim", "layer_types", "mm_newline_position", "add_faster_video", "faster_token_stride",
    "mm_spatial_pool_stride", "mm_spatial_pool_mode", "mm_vision_select_layer", "mm_vision_select_feature",
    "mm_projector_type", "mm_hidden_size", "bos_token_id", "eos_token_id", "pad_token_id",
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "rope_theta", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
    "rope_parameters",
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
    hf = dict(hf)
    model_type = hf.get("model_type")
    if model_type not in ("llava_qwen", "qwen2"):
        raise ConfigError(f"config.json model_type must be 'llava_qwen' or 'qwen2', got {model_type!r}")
    known = _HF_IGNORED | set(_BEACON_KEYS)
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
    eos = hf.get("eos_token_id")
    lm = LMConfig(
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
    beacon_kwargs = {}
    for hk, ours in _BEACON_KEYS.items():
        if hk in hf:
            v = hf[hk]
            beacon_kwargs[ours] = tuple(v) if isinstance(v, list) else v
    beacon = _build(BeaconConfig, beacon_kwargs, "beacon")

    select_layer = int(hf.get("mm_vision_select_layer", -2))
    select_feature = hf.get("mm_vision_select_feature", "patch")
    vis = vision_from_hf(vision if vision is not None else CLIP_VIT_L14_336, select_layer, select_feature)
    mm_hidden = int(hf.get("mm_hidden_size", vis.hidden_size))
    projector = ProjectorConfig(in_features=mm_hidden, pool_stride=int(hf.get("mm_spatial_pool_stride", 2)))
    return VideoXLConfig(vision=vis, projector=projector, lm=lm, beacon=beacon, runtime=runtime or RuntimeConfig())


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
