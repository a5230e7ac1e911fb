"""The embedded default model: the tiny model (:func:`vxl_jax.config.tiny_config`) with random weights (seed 0)
+ the tiny tokenizer.

It lets ``infer.py`` (and tests) run end to end with no download and no checkpoint. Its answers are
random tokens: it exercises the pipeline, not the language ability.
"""

from __future__ import annotations

from vxl_jax.infer.api import VideoXL
from vxl_jax.config import tiny_config
from vxl_jax.model import random_model
from vxl_jax.text.tokenizer import build_tiny_tokenizer

GENERATION_DEFAULTS = {"eos_token_id": [2, 1], "max_new_tokens": 32, "do_sample": False}


def default_model(dtype: str = "float32", seed: int = 0, mesh=None):
    """-> ``vxl_jax.infer.api.VideoXL``: tiny random model (``random_model(cfg, seed)``), tiny tokenizer, and
    generation defaults (eos [2, 1], 32 new tokens, greedy). ``mesh``: as for ``VideoXL`` (e.g.
    ``{"tensor": 2}``)."""
    cfg = tiny_config(dtype)
    return VideoXL(cfg, random_model(cfg, seed=seed), build_tiny_tokenizer(), dict(GENERATION_DEFAULTS), mesh=mesh)
