"""Run a stack of identical layers with ``jax.lax.scan`` over ``nnx.split`` state, remat by name."""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

# Names tagged with ``jax.ad_checkpoint.checkpoint_name`` inside the layers.
QKV_NAMES = ("query_proj", "key_proj", "value_proj")


def remat_policy(name: str):
    """Policy for ``jax.checkpoint``: None means no remat at all."""
    cp = jax.checkpoint_policies
    if name == "none":
        return None
    if name == "full":
        return cp.nothing_saveable
    if name == "minimal":
        return cp.dots_with_no_batch_dims_saveable
    if name == "save_qkv_proj":
        return cp.save_only_these_names(*QKV_NAMES)
    if name == "save_dot_except_mlp":
        return cp.save_only_these_names(*QKV_NAMES, "out_proj")
    raise ValueError(f"unknown remat policy {name!r}")


def scan_layers(layers: nnx.Module, fn: Callable, carry, xs=None, *, remat: str = "none", num_layers: int | None = None):
    """``fn(layer, carry, x) -> (carry, y)`` over the stacked ``layers``; returns ``(carry, ys)``.

    ``num_layers`` runs only the first n layers of the stack (CLIP's layer -2 output).
    """
    graphdef, state = nnx.split(layers)
    if num_layers is not None:
        state = jax.tree.map(lambda a: a[:num_layers], state)

    def body(c, inp):
        layer_state, x = inp
        return fn(nnx.merge(graphdef, layer_state), c, x)

    policy = remat_policy(remat)
    if policy is not None:
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    return jax.lax.scan(body, carry, (state, xs))


def stacked(make_layer: Callable[[nnx.Rngs], nnx.Module], num: int, rngs: nnx.Rngs) -> nnx.Module:
    """Create ``num`` layers as one module whose parameters have a leading ``layers`` axis."""

    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(r):
        return make_layer(r)

    return make(rngs.split(num))
