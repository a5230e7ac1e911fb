"""Tiling shared by the ``pallas`` attention kernels (:mod:`vxl_jax.model.pallas_attention` and its
backward): static tile sizes for a chunk over a memory, and per-KV-head row reads of a slot-major
key/value tile (``[n * KV, Dh]``, row ``s * KV + kv``)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

BLOCK_MEM_MAX = 2048  # memory tiles grow as query tiles shrink (decoding), up to this
NEG = -1e30  # finite "minus infinity" for running maxima


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class Plan:
    """Static tile sizes and padded lengths for a chunk of T rows over a memory of M slots."""

    def __init__(self, T: int, M: int, block_q: int, block_k: int, block_mem: int):
        for name, b in (("block_q", block_q), ("block_k", block_k), ("block_mem", block_mem)):
            if b <= 0 or b % 8:
                raise ValueError(f"{name} must be a positive multiple of 8, got {b}")
        t8 = round_up(T, 8)
        self.tq = min(round_up(-(-T // -(-T // block_q)), 8), t8)  # even tiles, little padding
        self.nq = -(-T // self.tq)
        self.kb = min(block_k, t8)
        self.nk = -(-T // self.kb)
        self.tq_pad, self.tk_pad = self.nq * self.tq, self.nk * self.kb
        mb = max(block_mem, min(BLOCK_MEM_MAX, block_mem * max(1, block_q // self.tq)))
        self.mb = min(mb, M)
        self.n_mem = -(-M // self.mb) if M else 0

    def last_chunk_tile(self, i, causal: bool):
        """Index of the last chunk key tile query tile i reads."""
        if not causal:
            return self.nk - 1
        return jnp.minimum(self.nk - 1, jax.lax.div((i + 1) * self.tq - 1, self.kb))  # lax.div: no floor/sign on TPU

    def chunk_tile(self, i, j, causal: bool):
        """Block index of the chunk key tile read at grid step j of query tile i (memory steps and steps
        past the diagonal repeat a tile already read, so nothing new is fetched)."""
        return jnp.clip(j - self.n_mem, 0, self.last_chunk_tile(i, causal))

    def mem_tile(self, b, j, lens):
        """Block index of the memory tile read at grid step j of batch row b (``lens`` [B] filled slots):
        steps past the filled tiles repeat the last one, so nothing new is fetched."""
        last = jnp.maximum(jax.lax.div(lens[b] + self.mb - 1, self.mb) - 1, 0)
        return jnp.minimum(jnp.minimum(j, last), self.n_mem - 1)

    def chunk_visible(self, valid_ref, i, c, causal: bool):
        """[tq, kb] bool: the keys of chunk tile c (``valid_ref`` [1, kb] nonzero: real) that query tile i sees."""
        ok = jnp.broadcast_to(valid_ref[...] != 0, (self.tq, self.kb))
        if causal:
            rows = i * self.tq + jax.lax.broadcasted_iota(jnp.int32, (self.tq, self.kb), 0)
            cols = c * self.kb + jax.lax.broadcasted_iota(jnp.int32, (self.tq, self.kb), 1)
            ok = ok & (cols <= rows)
        return ok

    def memory_visible(self, j, mem_len):
        """(ok [tq, mb], key_ok [mb, 1]) bool: the slots of memory tile j below ``mem_len``, as seen from the
        query rows and as rows of the key/value tile."""
        cols = j * self.mb + jax.lax.broadcasted_iota(jnp.int32, (self.tq, self.mb), 1)
        slots = j * self.mb + jax.lax.broadcasted_iota(jnp.int32, (self.mb, 1), 0)
        return cols < mem_len, slots < mem_len


def head_rows(ref, kv: int, KV: int, n: int):
    """Rows kv, kv + KV, ... (n of them) of a slot-major [n * KV, D] tile: KV head kv's keys or values.

    Mosaic loads strided rows of 32-bit data only; a 16-bit tile is read as 32-bit words (TPU packs
    rows 2r and 2r + 1 into one word, low and high half), keeping the half that holds head kv.
    """
    # unit block dims are kept (not squeezed: Mosaic bitcasts the whole ref) and sliced, not indexed
    # (interpret mode gathers strided rows only under slices)
    lead = (pl.ds(0, 1),) * (ref.ndim - 2)
    unit = (0,) * (ref.ndim - 2)
    if KV == 1:
        return ref[...][unit]
    bits = jnp.dtype(ref.dtype).itemsize * 8
    if bits == 32:
        return ref[(*lead, pl.ds(kv, n, stride=KV), slice(None))][unit]
    if bits != 16 or KV % 2:
        raise ValueError(f"pallas attention reads {ref.dtype} memory with an even number of KV heads, got {KV}")
    words = ref.bitcast(jnp.uint32)[(*lead, pl.ds(kv // 2, n, stride=KV // 2), slice(None))][unit]
    half = words << 16 if kv % 2 == 0 else words & jnp.uint32(0xFFFF0000)
    as_f32 = pltpu.bitcast(half, jnp.float32)  # a bf16 in the high half of a word is that value in fp32
    if ref.dtype == jnp.bfloat16:
        return as_f32.astype(jnp.bfloat16)
    return pltpu.bitcast((half >> 16 if kv % 2 else words & jnp.uint32(0xFFFF)).astype(jnp.uint16), ref.dtype)


def pad_rows(x, n):
    return x if x.shape[1] == n else jnp.pad(x, [(0, 0), (0, n - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


class Operands(NamedTuple):
    """The kernels' inputs, padded to whole tiles and laid out for them."""

    q: jax.Array  # [B, tq_pad, H * Dh]
    k: jax.Array  # [B, tk_pad * KV, Dh], slot-major rows: t * KV + kv
    v: jax.Array
    valid: jax.Array  # int32 [B, 1, tk_pad]: keys on lanes
    mem_k: jax.Array | None  # [L, B, M * KV, Dh] (None: no memory)
    mem_v: jax.Array | None
    mem_len: jax.Array  # int32 [B] (scalar prefetch)
    layer: jax.Array  # int32 [1] (scalar prefetch): the layer of a stacked memory


def tiled_operands(plan: Plan, q, k, v, valid, mem_k, mem_v, mem_len, layer) -> Operands:
    """q [B, T, H, Dh], k/v [B, T, KV, Dh], valid [B, T], memory [(L,) B, M, KV, Dh] or None, mem_len [B] or
    None, layer scalar or None -> :class:`Operands` for the tiles of ``plan``."""
    B, T, H, D = q.shape
    KV = k.shape[2]
    mk = mv = None
    if mem_k is not None:
        L, M = (mem_k.shape[0] if mem_k.ndim == 5 else 1), mem_k.shape[-3]
        # [(L,) B, M, KV, D] -> [L, B, M * KV, D]: the same bytes (TPU tiles the (KV, D) pair row-major)
        mk, mv = (m.reshape(L, B, M * KV, D) for m in (mem_k, mem_v))
    return Operands(
        q=pad_rows(q.reshape(B, T, H * D), plan.tq_pad),
        k=pad_rows(k, plan.tk_pad).reshape(B, plan.tk_pad * KV, D),
        v=pad_rows(v, plan.tk_pad).reshape(B, plan.tk_pad * KV, D),
        valid=pad_rows(valid.astype(jnp.int32), plan.tk_pad)[:, None, :],
        mem_k=mk, mem_v=mv,
        mem_len=jnp.zeros((B,), jnp.int32) if mem_len is None else mem_len.astype(jnp.int32),
        layer=jnp.zeros((1,), jnp.int32) if layer is None else jnp.reshape(layer, (1,)).astype(jnp.int32))
