"""The Video-XL network: CLIP tower -> projector -> 2x2 pool -> Qwen2 with beacon parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vxl_jax.config import VideoXLConfig
from vxl_jax.model.clip import CLIPVisionTower
from vxl_jax.model.layers import dtype_of
from vxl_jax.model.projector import Projector, pool_2x2
from vxl_jax.model.qwen2 import Qwen2LM
from vxl_jax.media.preprocess import normalize_frames


class VideoXLModel(nnx.Module):
    def __init__(self, cfg: VideoXLConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = dtype_of(cfg.runtime.param_dtype)
        self.vision = CLIPVisionTower(cfg.vision, pdt, rngs)
        self.projector = Projector(cfg.projector.in_features, cfg.lm.hidden_size, pdt, rngs)
        self.lm = Qwen2LM(cfg.lm, pdt, rngs)

    @property
    def compute_dtype(self):
        return dtype_of(self.cfg.runtime.compute_dtype)

    def pixel_values(self, pixels):
        """uint8 frames [F, S, S, 3] -> CLIP-normalized [F, 3, S, S] in the compute dtype (on device);
        float pixel values [F, 3, S, S] (already normalized) pass through unchanged."""
        if pixels.dtype == jnp.uint8:
            return normalize_frames(pixels, self.compute_dtype)
        return pixels

    def vision_features(self, pixels):
        """pixels uint8 [F, S, S, 3] or normalized float [F, 3, S, S] -> CLIP layer-``select_layer`` patch
        features [F, 576, C_vis]."""
        rt = self.cfg.runtime
        return self.vision(self.pixel_values(pixels), dtype=self.compute_dtype, attention=rt.attention,
                           remat=rt.remat)

    def encode_frames(self, pixels):
        """pixels uint8 [F, S, S, 3] (raw frames, normalized here) or normalized float [F, 3, S, S] -> pooled
        visual tokens [F, 144, D] (projector first, then the 2x2 pool)."""
        projected = self.projector(self.vision_features(pixels))
        return pool_2x2(projected, self.cfg.vision.grid, self.cfg.projector.pool_stride)

    def text_logits(self, ids):
        """Plain causal forward (no memory): ids [B, T] -> fp32 logits [B, T, V]."""
        B, T = ids.shape
        positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        rt = self.cfg.runtime
        hidden, _, _ = self.lm(self.lm.embed_tokens(ids, self.compute_dtype), positions=positions,
                               attention=rt.attention, remat=rt.remat)
        return self.lm.logits(hidden)


def init_model(cfg: VideoXLConfig, seed: int = 0) -> VideoXLModel:
    return VideoXLModel(cfg, nnx.Rngs(params=seed))


def abstract_model(cfg: VideoXLConfig) -> VideoXLModel:
    """Shapes and dtypes only (``jax.eval_shape``); allocates nothing."""
    return nnx.eval_shape(lambda: VideoXLModel(cfg, nnx.Rngs(params=0)))


def random_model(cfg: VideoXLConfig, seed: int = 0, std: float = 0.02) -> VideoXLModel:
    """A model with random parameters, built from numpy in a fraction of a second.

    Norm scales are 1 + N(0, std), everything else N(0, std). For tests and the embedded demo.
    """
    import numpy as np

    graphdef, state = nnx.split(abstract_model(cfg))
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = "/".join(str(p.key) for p in path if hasattr(p, "key"))
        value = rng.normal(0.0, std, x.shape)
        if "norm" in name and name.endswith("scale"):
            value = value + 1.0
        return jnp.asarray(value, dtype=x.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))
