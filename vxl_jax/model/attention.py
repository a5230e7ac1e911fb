"""Scaled dot-product attention of a chunk over ``[KV memory || chunk]``, behind one switch.

Backends (``runtime.attention``):
- ``xla`` (default): :mod:`vxl_jax.model.blocked`, length-aware blocked attention with online
  softmax; reads only the filled memory, skips masked causal blocks, keeps no score matrix for the
  backward. Any device.
- ``reference``: the plain dense path (concatenate memory and chunk, one fp32 softmax per row, query
  rows in blocks of ``QUERY_BLOCK``). Cost follows the buffer's capacity; kept as the reference.
- ``pallas``: :mod:`vxl_jax.model.pallas_attention`, a Pallas kernel with the blocked path's
  semantics (scalar-prefetched memory length, skipped empty/causally masked tiles, GQA, memory read
  in place, per shard under a mesh); Mosaic on TPU, interpret mode on CPU (tests), the ``xla`` path
  on GPUs. On TPU a head size that is not a multiple of 128 (CLIP's 64) falls back to ``xla``.
  Gradients: three more kernels.
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (GPU; bfloat16/float16
  only) over the dense ``[memory || chunk]`` layout with a boolean mask (turned into cuDNN's
  additive bias): memory slots ``>= mem_len`` and invalid/non-causal chunk keys masked, masked
  memory zeroed (stale slots never leak NaN), rows that see no key set to 0. Cost follows the
  memory's capacity.
- ``dot_product``: the same construction with XLA's own lowering (any device; checks ``cudnn``'s
  layout on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vxl_jax.model.blocked import blocked_attention
from vxl_jax.model.pallas_attention import pallas_attention

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
    if backend == "pallas":
        return pallas_attention(q, k, v, valid=valid, causal=causal, mem_k=mem_k, mem_v=mem_v, mem_len=mem_len,
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
        if backend != "reference":  # stale slots past mem_len may hold anything: 0 * NaN would leak
            filled = (jnp.arange(mem_k.shape[1])[None, :] < mem_len[:, None])[..., None, None]
            mem_k, mem_v = jnp.where(filled, mem_k, 0), jnp.where(filled, mem_v, 0)
        k = jnp.concatenate([mem_k.astype(k.dtype), k], axis=1)
        v = jnp.concatenate([mem_v.astype(v.dtype), v], axis=1)
    else:
        mask = None if plain else chunk_mask(jnp.zeros((B,), jnp.int32), 0, valid, causal)
    if backend == "reference":
        return dense_attention(q, k, v, mask, scale)
    return sdpa_attention(q, k, v, mask, scale, implementation="cudnn" if backend == "cudnn" else "xla")


def sdpa_attention(q, k, v, mask, scale, implementation: str = "cudnn"):
    """``jax.nn.dot_product_attention`` over a dense layout: q [B, T, H, D]; k, v [B, S, KV, D] (GQA
    native); mask [B, T, S] bool or None -> [B, T, H, D]. A row whose mask is all False gives 0 (the
    softmax of an all-masked row is undefined). ``implementation="cudnn"`` needs bfloat16/float16."""
    if implementation == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention backend 'cudnn' needs bfloat16 or float16 inputs (runtime.compute_dtype), "
                         f"got {q.dtype}; use 'xla' for float32")
    m = None if mask is None else mask[:, None, :, :]
    out = jax.nn.dot_product_attention(q, k, v, mask=m, scale=scale, implementation=implementation)
    return out if mask is None else jnp.where(jnp.any(mask, -1)[:, :, None, None], out, 0).astype(out.dtype)
