"""``mlp2x_gelu`` projector and the 2x2 average pool applied after it (docs/algorithm.md §1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vxl_jax.model.layers import Proj


class Projector(nnx.Module):
    """[..., in] -> [..., out]: Linear, exact (erf) GELU, Linear."""

    def __init__(self, in_dim: int, out_dim: int, dtype, rngs: nnx.Rngs):
        self.fc1 = Proj(in_dim, (out_dim,), ("vis_embed", "embed"), dtype, rngs)
        self.fc2 = Proj(out_dim, (out_dim,), ("embed_in", "embed"), dtype, rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


def pool_2x2(features, grid: int, stride: int = 2):
    """[F, grid*grid, C] (row-major patches) -> [F, (grid/stride)^2, C], mean of each stride x stride block."""
    F, N, C = features.shape
    g = grid // stride
    x = features.reshape(F, g, stride, g, stride, C)
    return jnp.mean(x, axis=(2, 4)).reshape(F, g * g, C)
