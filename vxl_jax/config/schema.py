"""The model config schema: ``vision`` (CLIP ViT), ``projector`` (mlp2x_gelu + 2x2 pool), ``lm`` (Qwen2 +
beacon parameters), ``beacon`` (visual-summary-token compression) and ``runtime`` (dtypes, attention
backend, remat policy, mesh, sharding rules), validated on construction."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from vxl_jax.config.coerce import build
from vxl_jax.config.errors import ConfigError
from vxl_jax.config.presets import load_yaml_sections


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

    def num_windows(self, num_visual: int) -> int:
        """Compression windows for ``num_visual`` visual tokens (the last one may be partial;
        docs/algorithm.md §3)."""
        return -(-int(num_visual) // self.window)

    def windows_for_frames(self, num_frames: int) -> int:
        """Compression windows for ``num_frames`` frames."""
        return self.num_windows(int(num_frames) * self.tokens_per_frame)

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
SHARDING_PRESETS = ("fsdp", "fsdp_tp", "inference")  # the rule tables of vxl_jax.runtime.sharding.PRESETS
ATTENTION_BACKENDS = ("xla", "reference", "pallas", "cudnn", "dot_product")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Numerics and execution: storage/compute dtypes, attention backend, remat, mesh, sharding rules.

    The one place runtime settings live: it rides on the model (``model.cfg.runtime``), and every
    jitted step (inference engine, training loss, window scan) reads it from there; nothing passes
    these settings separately. To run with other settings, build or load the model with another
    runtime (``cfg.with_runtime(...)``, ``load_converted(..., runtime=...)``). ``sharding`` names the
    logical-axis rules preset (:data:`vxl_jax.runtime.sharding.PRESETS`) used for parameters, optimizer state,
    batches and activations.
    """

    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    attention: str = "xla"
    remat: str = "none"
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    sharding: str = "fsdp"

    def validate(self) -> None:
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"runtime.{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ConfigError(f"runtime.attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        if self.attention == "cudnn" and self.compute_dtype == "float32":
            raise ConfigError("runtime.attention 'cudnn' needs compute_dtype bfloat16 or float16 (cuDNN flash "
                              "attention has no float32); use 'xla' for float32")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"runtime.remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
        if self.sharding not in SHARDING_PRESETS:
            raise ConfigError(f"runtime.sharding must be one of {SHARDING_PRESETS}, got {self.sharding!r}")


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
        return build(cls, d, "")

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
