"""Typed configuration for Video-XL, split by concern (every name importable from ``vxl_jax.config``):

- :mod:`~vxl_jax.config.schema`: the model config (``vision``, ``projector``, ``lm``, ``beacon``, ``runtime``);
- :mod:`~vxl_jax.config.coerce`: the one strict ``dict -> dataclass`` builder (also used by the training sections);
- :mod:`~vxl_jax.config.presets`: YAML presets (``configs/*.yaml``) and ``key=value`` overrides;
- :mod:`~vxl_jax.config.hf`: a released checkpoint's ``config.json`` to our config and back;
- :mod:`~vxl_jax.config.tiny`: the tiny model (tests, the embedded demo), defined once.

The training sections (``train`` / ``data`` / ``checkpoint``) live in :mod:`vxl_jax.train.config`.
Every loader is strict: unknown keys and contradictory values raise :class:`ConfigError` naming
the offending field.
"""

from vxl_jax.config.coerce import build
from vxl_jax.config.errors import ConfigError
from vxl_jax.config.hf import CLIP_VIT_L14_336, from_hf_config, to_hf_config, vision_from_hf, vision_to_hf
from vxl_jax.config.presets import apply_overrides, load_yaml_sections
from vxl_jax.config.schema import (ATTENTION_BACKENDS, DTYPES, REMAT_POLICIES, SHARDING_PRESETS, BeaconConfig,
                                   LMConfig, MeshConfig, ProjectorConfig, RuntimeConfig, VideoXLConfig, VisionConfig)
from vxl_jax.config.tiny import TINY_MODEL, tiny_config

__all__ = [
    "ATTENTION_BACKENDS", "CLIP_VIT_L14_336", "DTYPES", "REMAT_POLICIES", "SHARDING_PRESETS", "TINY_MODEL",
    "BeaconConfig",
    "ConfigError", "LMConfig", "MeshConfig", "ProjectorConfig", "RuntimeConfig", "VideoXLConfig", "VisionConfig",
    "apply_overrides", "build", "from_hf_config", "load_yaml_sections", "to_hf_config", "vision_from_hf",
    "tiny_config", "vision_to_hf",
]
