"""User-facing API: ``VideoXL.load(path)``, ``prefill`` and ``generate``."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vxl_jax.config import VideoXLConfig
from vxl_jax.memory import KVMemory
from vxl_jax.model import VideoXLModel

IMAGE_TOKEN_INDEX = -200


@dataclasses.dataclass
class PrefillResult:
    logits: np.ndarray  # float32 [S, vocab]: text after the video (every position for text-only)
    memory: KVMemory  # compressed memory after the prompt (prefix + beacons + text)


class VideoXL:
    """A loaded Video-XL: config, parameters and (optionally) tokenizer + generation defaults."""

    def __init__(self, cfg: VideoXLConfig, model: VideoXLModel, tokenizer: Any = None,
                 generation_config: dict | None = None):
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = dict(generation_config or {})
        self._graphdef, self._state = nnx.split(model)
        self._text_logits = jax.jit(
            lambda state, ids: nnx.merge(self._graphdef, state).text_logits(ids))

    @classmethod
    def load(cls, path, dtype: str = "float32") -> "VideoXL":
        """Load a folder written by ``convert_weights.py`` (config, params, tokenizer)."""
        from vxl_jax.checkpoint import load_converted

        cfg, model, tokenizer, gen = load_converted(path, dtype=dtype)
        return cls(cfg, model, tokenizer, gen)

    def prefill(self, input_ids, pixel_values=None, ratio: int | None = None) -> PrefillResult:
        ids = np.asarray(input_ids)
        if ids.ndim != 1:
            raise ValueError(f"input_ids must be 1-D token ids, got shape {ids.shape}")
        if pixel_values is None:
            if (ids == IMAGE_TOKEN_INDEX).any():
                raise ValueError("input_ids contain the -200 video placeholder but pixel_values is None")
            logits = self._text_logits(self._state, jnp.asarray(ids[None], jnp.int32))[0]
            return PrefillResult(np.asarray(logits, np.float32), None)
        raise NotImplementedError("video prefill: see vxl_jax.beacon")
