"""vxl-jax: Video-XL (visual summary token compression for long videos) in JAX / Flax NNX.

    from vxl_jax import VideoXL, VideoXLConfig

The public names are exported lazily (PEP 562 ``__getattr__``): ``import vxl_jax`` (and so importing any
of its modules, e.g. the light argument parser of ``infer.py``) loads no jax; the first use of a name
imports the module that defines it. This is the package's one lazy import (tests/test_imports.py).
"""

import importlib
import os

# The base install has no torch: transformers (tokenizers only here) would advise installing it on import.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

_EXPORTS = {  # public name -> the module defining it
    "VideoXL": "vxl_jax.infer.api",
    "PrefillResult": "vxl_jax.infer.results",
    "VideoMemory": "vxl_jax.infer.results",
    "VideoXLConfig": "vxl_jax.config",
    "ConfigError": "vxl_jax.config",
    "IMAGE_TOKEN_INDEX": "vxl_jax.text.constants",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """``vxl_jax.NAME`` for a public name: imported from its module on first use, then cached here."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vxl_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
