"""CLIP ViT vision tower (HF ``CLIPVisionModel`` numerics), returning layer ``select_layer`` features."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vxl_jax.config import VisionConfig
from vxl_jax.model.attention import attend
from vxl_jax.model.layers import LayerNorm, OutProj, Proj, param
from vxl_jax.model.scan import scan_layers, stacked
from vxl_jax.runtime.sharding import constrain


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


class CLIPLayer(nnx.Module):
    """Pre-LN encoder layer: ``x + attn(ln1(x))`` then ``x + fc2(quick_gelu(fc1(ln2(x))))``."""

    def __init__(self, cfg: VisionConfig, dtype, rngs: nnx.Rngs):
        C, H, Dh, I = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
        self.norm1 = LayerNorm(C, cfg.layer_norm_eps, dtype, rngs)
        self.q = Proj(C, (H, Dh), ("vis_embed", "vis_heads", "head_dim"), dtype, rngs)
        self.k = Proj(C, (H, Dh), ("vis_embed", "vis_heads", "head_dim"), dtype, rngs)
        self.v = Proj(C, (H, Dh), ("vis_embed", "vis_heads", "head_dim"), dtype, rngs)
        self.o = OutProj(H, Dh, C, ("vis_heads", "head_dim", "vis_embed"), dtype, rngs, use_bias=True)
        self.norm2 = LayerNorm(C, cfg.layer_norm_eps, dtype, rngs)
        self.fc1 = Proj(C, (I,), ("vis_embed", "vis_mlp"), dtype, rngs)
        self.fc2 = Proj(I, (C,), ("vis_mlp", "vis_embed"), dtype, rngs)

    def __call__(self, x, attention: str):
        h = self.norm1(x)
        a = attend(self.q(h), self.k(h), self.v(h), causal=False, backend=attention)
        x = x + self.o(a)
        return x + self.fc2(quick_gelu(self.fc1(self.norm2(x))))


class CLIPVisionTower(nnx.Module):
    """pixels [F, 3, S, S] (NCHW, normalised) -> features [F, num_patches, C] (CLS dropped)."""

    def __init__(self, cfg: VisionConfig, dtype, rngs: nnx.Rngs):
        self.cfg = cfg
        C, P = cfg.hidden_size, cfg.patch_size
        self.patch_embed = param(rngs, (P, P, cfg.num_channels, C), (None, None, None, "vis_embed"), dtype)
        self.class_embed = param(rngs, (C,), ("vis_embed",), dtype)
        self.pos_embed = param(rngs, (cfg.num_patches + 1, C), (None, "vis_embed"), dtype)
        self.pre_norm = LayerNorm(C, cfg.layer_norm_eps, dtype, rngs)
        self.layers = stacked(lambda r: CLIPLayer(cfg, dtype, r), cfg.num_layers, rngs)
        # Kept for a faithful round trip of the checkpoint; not used by Video-XL (layer -2 output).
        self.post_norm = LayerNorm(C, cfg.layer_norm_eps, dtype, rngs)

    def embed(self, pixels, dtype):
        cfg = self.cfg
        F, Cin, S, _ = pixels.shape
        P, g = cfg.patch_size, cfg.grid
        x = pixels.astype(dtype).reshape(F, Cin, g, P, g, P)
        x = x.transpose(0, 2, 4, 3, 5, 1).reshape(F, g * g, P * P * Cin)  # patches in (kh, kw, c) order
        w = self.patch_embed[...].astype(dtype).reshape(P * P * Cin, -1)
        patches = x @ w
        cls = jnp.broadcast_to(self.class_embed[...].astype(dtype), (F, 1, patches.shape[-1]))
        x = jnp.concatenate([cls, patches], axis=1) + self.pos_embed[...].astype(dtype)[None]
        return self.pre_norm(x)

    def __call__(self, pixels, *, dtype=jnp.float32, attention: str = "xla", remat: str = "none"):
        cfg = self.cfg
        if pixels.shape[1:] != (cfg.num_channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"pixel_values must be [F, {cfg.num_channels}, {cfg.image_size}, {cfg.image_size}], got {pixels.shape}"
            )
        x = self.embed(pixels, dtype)

        def step(layer, h, _):
            return constrain(layer(h, attention), ("frames", None, "act_embed")), None

        x, _ = scan_layers(self.layers, step, x, remat=remat, num_layers=cfg.layers_used)
        return x[:, 1:] if cfg.select_feature == "patch" else x
