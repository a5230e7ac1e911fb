"""Rotary position embedding, rotate-half convention (HF Qwen2), tables in fp32."""

from __future__ import annotations

import jax.numpy as jnp


def inv_frequencies(head_dim: int, theta: float):
    """[head_dim/2] fp32: ``1 / theta ** (2i / head_dim)`` exactly as HF computes it."""
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.int32).astype(jnp.float32) / head_dim
    return 1.0 / (jnp.float32(theta) ** exponents)


def rope_tables(positions, head_dim: int, theta: float):
    """positions [..., T] int -> (cos, sin), each [..., T, head_dim] fp32."""
    angles = positions.astype(jnp.float32)[..., None] * inv_frequencies(head_dim, theta)
    emb = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rotate(x, cos, sin):
    """``x * cos + rotate_half(x) * sin``; cos/sin broadcast against x and are cast to x's dtype."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)


def apply_rope(x, cos, sin):
    """x [B, T, heads, D]; cos/sin [B, T, D] fp32 (cast to x's dtype, as the original does)."""
    return rotate(x, cos[:, :, None, :], sin[:, :, None, :])
