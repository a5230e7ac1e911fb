"""vxl-jax: Video-XL (visual summary token compression for long videos) in JAX / Flax NNX."""

from vxl_jax.api import IMAGE_TOKEN_INDEX, PrefillResult, VideoMemory, VideoXL
from vxl_jax.config import ConfigError, VideoXLConfig

__all__ = ["VideoXL", "PrefillResult", "VideoMemory", "VideoXLConfig", "ConfigError", "IMAGE_TOKEN_INDEX"]
