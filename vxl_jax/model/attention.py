"""Scaled dot-product attention behind one switch.

Backends (``runtime.attention``):
- ``xla``: explicit grouped einsums, fp32 scores and softmax. The reference path (tests, CPU, TPU).
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (fused, GPU only).
- ``dot_product``: ``jax.nn.dot_product_attention`` with XLA's own lowering (any device).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attend(q, k, v, mask, *, backend: str = "xla", scale: float | None = None):
    """q [B, T, H, D]; k, v [B, S, KV, D] (H = KV * groups); mask [B, T, S] bool or None.

    Query head h reads KV head h // (H // KV) (contiguous groups, as HF ``repeat_kv``).
    Returns [B, T, H, D] in q's dtype.
    """
    B, T, H, D = q.shape
    KV = k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    if backend == "xla":
        G = H // KV
        qg = q.reshape(B, T, KV, G, D)
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
        if mask is not None:
            scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
        return out.reshape(B, T, H, D)
    if backend in ("cudnn", "dot_product"):
        impl = "cudnn" if backend == "cudnn" else None
        m = None if mask is None else mask[:, None, :, :]
        return jax.nn.dot_product_attention(q, k, v, mask=m, scale=scale, implementation=impl)
    raise ValueError(f"unknown attention backend {backend!r}")
