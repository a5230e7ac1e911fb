"""The embedded default model: configs/tiny.yaml with random weights (seed 0) + the tiny tokenizer.

It lets ``infer.py`` (and tests) run end to end with no download and no checkpoint. Its answers are
random tokens: it exercises the pipeline, not the language ability.
"""

from __future__ import annotations

import pathlib

from vxl_jax.infer.api import VideoXL
from vxl_jax.config import VideoXLConfig
from vxl_jax.model import random_model
from vxl_jax.text.tokenizer import build_tiny_tokenizer

TINY_MODEL = {  # same as configs/tiny.yaml `model:` (used when the package is installed without configs/)
    "vision": {"image_size": 336, "patch_size": 14, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
               "num_heads": 4, "select_layer": -2},
    "projector": {"in_features": 32},
    "lm": {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
           "num_kv_heads": 2, "rope_theta": 1000000.0, "bos_token_id": 1, "eos_token_id": 2},
    "beacon": {"window": 1440, "stride": 1440, "ratios": [2, 4, 8, 12, 16]},
    "runtime": {"param_dtype": "float32", "compute_dtype": "float32", "attention": "xla", "remat": "none"},
}
GENERATION_DEFAULTS = {"eos_token_id": [2, 1], "max_new_tokens": 32, "do_sample": False}


def tiny_config_path() -> pathlib.Path | None:
    """<repo>/configs/tiny.yaml next to the package, if present."""
    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
    return path if path.is_file() else None


def tiny_config(dtype: str = "float32"):
    """VideoXLConfig of the embedded model (configs/tiny.yaml, else the built-in copy)."""
    path = tiny_config_path()
    cfg = VideoXLConfig.from_yaml(path) if path else VideoXLConfig.from_dict(TINY_MODEL)
    if dtype != "float32":
        cfg = cfg.with_runtime(param_dtype=dtype, compute_dtype=dtype)
    return cfg


def default_model(dtype: str = "float32", seed: int = 0, mesh=None):
    """-> ``vxl_jax.infer.api.VideoXL``: tiny random model (``random_model(cfg, seed)``), tiny tokenizer, and
    generation defaults (eos [2, 1], 32 new tokens, greedy). ``mesh``: as for ``VideoXL`` (e.g.
    ``{"tensor": 2}``)."""
    cfg = tiny_config(dtype)
    return VideoXL(cfg, random_model(cfg, seed=seed), build_tiny_tokenizer(), dict(GENERATION_DEFAULTS), mesh=mesh)
