"""Parameter helpers and normalisation layers shared by the vision tower and the decoder.

Every parameter carries logical axis names (``out_sharding`` metadata) that
:mod:`vxl_jax.runtime.sharding` maps to mesh axes. Eager sharding is off: placement happens once, at
``jax.jit``/``device_put`` time, from the rules table.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vxl_jax.config import DTYPES as DTYPE_NAMES

DTYPES = {name: getattr(jnp, name) for name in DTYPE_NAMES}  # config name -> jnp dtype (the one table)


def dtype_of(name: str):
    return DTYPES[name]


def param(rngs: nnx.Rngs | None, shape, axes, dtype, init: str = "normal", scale: float = 0.02) -> nnx.Param:
    """A parameter of ``shape`` with logical ``axes`` (one name or None per dim)."""
    assert len(shape) == len(axes), (shape, axes)
    if init == "normal":
        value = jax.random.normal(rngs.params(), shape, jnp.float32) * scale
    elif init == "zeros":
        value = jnp.zeros(shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:  # pragma: no cover
        raise ValueError(init)
    return nnx.Param(value.astype(dtype), out_sharding=tuple(axes), eager_sharding=False)


class RMSNorm(nnx.Module):
    """Qwen2 RMSNorm: fp32 ``x * rsqrt(mean(x^2) + eps)``, cast back, times ``scale`` [D]."""

    def __init__(self, dim: int, eps: float, dtype, rngs: nnx.Rngs | None = None):
        self.scale = param(rngs, (dim,), ("norm",), dtype, init="ones")
        self.eps = eps

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * y.astype(x.dtype)


class LayerNorm(nnx.Module):
    """CLIP LayerNorm (statistics in fp32), ``scale``/``bias`` [C]."""

    def __init__(self, dim: int, eps: float, dtype, rngs: nnx.Rngs | None = None):
        self.scale = param(rngs, (dim,), ("norm",), dtype, init="ones")
        self.bias = param(rngs, (dim,), ("norm",), dtype, init="zeros")
        self.eps = eps

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class Proj(nnx.Module):
    """Dense projection ``x[..., in] -> [..., *out_shape]`` with optional bias.

    ``kernel``: [in, *out_shape]; ``bias``: out_shape. Used with head-split outputs
    (``out_shape=(heads, head_dim)``) for q/k/v so no reshape is needed.
    """

    def __init__(self, in_dim: int, out_shape: tuple[int, ...], axes: tuple, dtype, rngs, use_bias: bool = True,
                 scale: float = 0.02):
        self.kernel = param(rngs, (in_dim, *out_shape), axes, dtype, scale=scale)
        self.bias = param(rngs, out_shape, axes[1:], dtype, init="zeros") if use_bias else None

    def __call__(self, x):
        y = jnp.tensordot(x, self.kernel[...].astype(x.dtype), axes=((x.ndim - 1,), (0,)))
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class OutProj(nnx.Module):
    """Attention output projection ``[..., heads, head_dim] -> [..., out]``; ``kernel`` [H, Dh, out]."""

    def __init__(self, heads: int, head_dim: int, out_dim: int, axes: tuple, dtype, rngs, use_bias: bool):
        self.kernel = param(rngs, (heads, head_dim, out_dim), axes, dtype)
        self.bias = param(rngs, (out_dim,), axes[2:], dtype, init="zeros") if use_bias else None

    def __call__(self, x):
        y = jnp.einsum("...hd,hdo->...o", x, self.kernel[...].astype(x.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y
