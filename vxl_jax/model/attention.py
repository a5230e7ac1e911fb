"""Scaled dot-product attention of a chunk over ``[KV memory || chunk]``, behind one switch.

Backends (``runtime.attention``):
- ``xla`` (default): :mod:`vxl_jax.model.blocked`, length-aware blocked attention with online
  softmax; reads only the filled memory, skips masked causal blocks, keeps no score matrix for the
  backward. Any device.
- ``reference``: the plain dense path (concatenate memory and chunk, one fp32 softmax per row, query
  rows in blocks of ``QUERY_BLOCK``). Cost follows the buffer's capacity; kept as the reference.
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` over the dense layout (GPU).
- ``dot_product``: ``jax.nn.dot_product_attention`` with XLA's own lowering, dense layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vxl_jax.model.blocked import blocked_attention

# Reference path: queries in blocks of this many rows, so the fp32 score matrix never exceeds
# [B, H, QUERY_BLOCK, S]. Each row's math is unchanged (exact, not online softmax).
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


def dense_attention(q, k, v, mask, scale):
    """q [B, T, H, D]; k, v [B, S, KV, D]; mask [B, T, S] bool or None -> [B, T, H, D] (exact softmax)."""
    B, T, H, D = q.shape
    if T <= QUERY_BLOCK or mask is None:
        return _xla_attention(q, k, v, mask, scale)
    n = -(-T // QUERY_BLOCK)
    pad = n * QUERY_BLOCK - T
    qb = jnp.pad(q, [(0, 0), (0, pad), (0, 0), (0, 0)]).reshape(B, n, QUERY_BLOCK, H, D).swapaxes(0, 1)
    mb = jnp.pad(mask, [(0, 0), (0, pad), (0, 0)]).reshape(B, n, QUERY_BLOCK, -1).swapaxes(0, 1)
    out = jax.lax.map(lambda x: _xla_attention(x[0], k, v, x[1], scale), (qb, mb))
    return out.swapaxes(0, 1).reshape(B, n * QUERY_BLOCK, H, D)[:, :T]


def chunk_mask(mem_len, mem_slots: int, valid, causal: bool = True):
    """[B, T, M + T] bool: memory slot j visible iff j < mem_len[b]; chunk key t' iff valid (and t' <= t)."""
    B, T = valid.shape
    mem = jnp.arange(mem_slots)[None, None, :] < mem_len[:, None, None]
    mem = jnp.broadcast_to(mem, (B, T, mem_slots))
    chunk = jnp.broadcast_to(valid[:, None, :], (B, T, T))
    if causal:
        chunk = chunk & jnp.tril(jnp.ones((T, T), bool))[None]
    return jnp.concatenate([mem, chunk], axis=-1)


def attend(q, k, v, *, valid=None, causal: bool = True, mem_k=None, mem_v=None, mem_len=None, mem_layer=None,
           backend: str = "xla", scale: float | None = None):
    """Chunk queries over ``[memory[:mem_len] || chunk]``.

    q [B, T, H, D] (rotated); k, v [B, T, KV, D] chunk keys (rotated) and values; valid [B, T] bool
    chunk keys that exist (default all); causal: chunk row t sees chunk keys t' <= t;
    mem_k/mem_v [B, M, KV, D] rotated memory or None, mem_len [B] valid slots; or the stacked
    [L, B, M, KV, D] memory of all layers with ``mem_layer`` (int32 scalar) naming this one.
    Query head h reads KV head h // (H // KV) (contiguous groups, as HF ``repeat_kv``).
    Returns [B, T, H, D] in q's dtype.
    """
    B, T, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    if backend == "xla":
        return blocked_attention(q, k, v, valid=valid, causal=causal, mem_k=mem_k, mem_v=mem_v, mem_len=mem_len,
                                 mem_layer=mem_layer, scale=scale)
    if backend not in ("reference", "cudnn", "dot_product"):
        raise ValueError(f"unknown attention backend {backend!r}")
    if mem_layer is not None:
        mem_k, mem_v = mem_k[mem_layer], mem_v[mem_layer]
    plain = valid is None and mem_k is None and not causal
    if valid is None:
        valid = jnp.ones((B, T), bool)
    if mem_k is not None:
        mem_len = jnp.zeros((B,), jnp.int32) if mem_len is None else mem_len
        mask = chunk_mask(mem_len, mem_k.shape[1], valid, causal)
        k = jnp.concatenate([mem_k.astype(k.dtype), k], axis=1)
        v = jnp.concatenate([mem_v.astype(v.dtype), v], axis=1)
    else:
        mask = None if plain else chunk_mask(jnp.zeros((B,), jnp.int32), 0, valid, causal)
    if backend == "reference":
        return dense_attention(q, k, v, mask, scale)
    impl = "cudnn" if backend == "cudnn" else None
    m = None if mask is None else mask[:, None, :, :]
    return jax.nn.dot_product_attention(q, k, v, mask=m, scale=scale, implementation=impl)
