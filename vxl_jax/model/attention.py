"""Scaled dot-product attention behind one switch.

Backends (``runtime.attention``):
- ``xla``: explicit grouped einsums, fp32 scores and softmax. The reference path (tests, CPU, TPU).
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (fused, GPU only).
- ``dot_product``: ``jax.nn.dot_product_attention`` with XLA's own lowering (any device).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


# Queries are processed in blocks of this many rows when a chunk is longer, so the fp32 score
# matrix never exceeds [B, H, QUERY_BLOCK, S]. Each row's math is unchanged (exact, not online softmax).
QUERY_BLOCK = 128


def _xla_attention(q, k, v, mask, scale):
    B, T, H, D = q.shape
    KV = k.shape[2]
    qg = q.reshape(B, T, KV, H // KV, D)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(B, T, H, D)


def attend(q, k, v, mask, *, backend: str = "xla", scale: float | None = None):
    """q [B, T, H, D]; k, v [B, S, KV, D] (H = KV * groups); mask [B, T, S] bool or None.

    Query head h reads KV head h // (H // KV) (contiguous groups, as HF ``repeat_kv``).
    Returns [B, T, H, D] in q's dtype.
    """
    B, T, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    if backend == "xla":
        if T <= QUERY_BLOCK or mask is None:
            return _xla_attention(q, k, v, mask, scale)
        n = -(-T // QUERY_BLOCK)
        pad = n * QUERY_BLOCK - T
        qb = jnp.pad(q, [(0, 0), (0, pad), (0, 0), (0, 0)]).reshape(B, n, QUERY_BLOCK, H, D).swapaxes(0, 1)
        mb = jnp.pad(mask, [(0, 0), (0, pad), (0, 0)]).reshape(B, n, QUERY_BLOCK, -1).swapaxes(0, 1)
        out = jax.lax.map(lambda x: _xla_attention(x[0], k, v, x[1], scale), (qb, mb))
        return out.swapaxes(0, 1).reshape(B, n * QUERY_BLOCK, H, D)[:, :T]
    if backend in ("cudnn", "dot_product"):
        impl = "cudnn" if backend == "cudnn" else None
        m = None if mask is None else mask[:, None, :, :]
        return jax.nn.dot_product_attention(q, k, v, mask=m, scale=scale, implementation=impl)
    raise ValueError(f"unknown attention backend {backend!r}")
