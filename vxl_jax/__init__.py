"""vxl-jax: Video-XL (visual summary token compression for long videos) in JAX / Flax NNX."""

import os

# The base install has no torch: transformers (tokenizers only here) would advise installing it on import.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from vxl_jax.infer.api import PrefillResult, VideoMemory, VideoXL  # noqa: E402
from vxl_jax.text.constants import IMAGE_TOKEN_INDEX  # noqa: E402
from vxl_jax.config import ConfigError, VideoXLConfig  # noqa: E402

__all__ = ["VideoXL", "PrefillResult", "VideoMemory", "VideoXLConfig", "ConfigError", "IMAGE_TOKEN_INDEX"]
