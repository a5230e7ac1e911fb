"""The tiny model, defined once: same structure as the release model, small widths (336x336 frames, 144 pooled
tokens per frame, 1440-token windows). It is the embedded demo model (:mod:`vxl_jax.infer.demo`, random
weights) and the tests' model; ``configs/tiny.yaml``'s ``model:`` section is this dict, written out for
``train.py --config`` (tests/test_config.py checks that they are equal), and ``configs/train_tiny.yaml`` is it
with 56x56 frames and 40-token windows. Part of the package, so an installed wheel needs no ``configs/``.
"""

from __future__ import annotations

from vxl_jax.config.schema import VideoXLConfig

TINY_MODEL = {
    "vision": {"image_size": 336, "patch_size": 14, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
               "num_heads": 4, "select_layer": -2},
    "projector": {"in_features": 32},
    "lm": {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
           "num_kv_heads": 2, "rope_theta": 1000000.0, "bos_token_id": 1, "eos_token_id": 2},
    "beacon": {"window": 1440, "stride": 1440, "ratios": [2, 4, 8, 12, 16]},
    "runtime": {"param_dtype": "float32", "compute_dtype": "float32", "attention": "xla", "remat": "none"},
}


def tiny_config(dtype: str = "float32") -> VideoXLConfig:
    """The tiny model's config (:data:`TINY_MODEL`), with parameters and compute in ``dtype``."""
    cfg = VideoXLConfig.from_dict(TINY_MODEL)
    if dtype != "float32":
        cfg = cfg.with_runtime(param_dtype=dtype, compute_dtype=dtype)
    return cfg
