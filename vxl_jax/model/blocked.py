"""Length-aware blocked attention over ``[KV memory (dynamic length) || chunk]``, with its own VJP.

The cost follows what is filled, not the buffer: memory keys are read in blocks of ``MEM_BLOCK``
slots by a loop whose trip count is ``ceil(max(mem_len) / MEM_BLOCK)`` (a dynamic bound: empty
capacity costs nothing and the buffer is never copied), and inside the chunk query block ``i``
reads only key blocks ``0..i`` when causal. Softmax statistics are merged online (running max and
sum in fp32), so no ``[T, M + T]`` score matrix exists. The backward recomputes scores block by
block from ``(q, k, v, out, lse)``: nothing quadratic is kept for it.

Shapes: q [B, T, H, Dh]; chunk k, v [B, T, KV, Dh]; memory k, v [B, M, KV, Dh] with
``mem_len`` [B] valid slots; ``valid`` [B, T] says which chunk keys exist. Query head h reads KV
head ``h // (H // KV)``. Statistics are kept as [B, KV, G, T] (G = H // KV).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

MEM_BLOCK = 256  # memory slots per loop step
CHUNK_BLOCK = 256  # query / key rows per block inside the chunk
_NEG = -1e30  # finite "minus infinity" for running maxima (masked entries are zeroed explicitly)


def _scores(qg, k, scale):
    """qg [B, T, KV, G, D], k [B, S, KV, D] -> fp32 [B, KV, G, T, S]."""
    return jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale


def _pv(p, v):
    """p fp32 [B, KV, G, T, S], v [B, S, KV, D] -> fp32 [B, KV, G, T, D]."""
    return jnp.einsum("bkgts,bskd->bkgtd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)


def _read(buf, layer, start, block):
    """Slots [start, start + block) of a [B, M, KV, D] buffer, or of layer ``layer`` of a stacked
    [L, B, M, KV, D] buffer (read in place: the layer's buffer is never copied out)."""
    if layer is None:
        return jax.lax.dynamic_slice_in_dim(buf, start, block, axis=1)
    L, B, M, KV, D = buf.shape
    return jax.lax.dynamic_slice(buf, (layer, 0, start, 0, 0), (1, B, block, KV, D))[0]


def _add(buf, layer, start, d):
    """``buf[(layer,) :, start:start + block] += d`` (d [B, block, KV, D])."""
    if layer is None:
        cur = jax.lax.dynamic_slice_in_dim(buf, start, d.shape[1], axis=1)
        return jax.lax.dynamic_update_slice_in_dim(buf, cur + d, start, axis=1)
    cur = _read(buf, layer, start, d.shape[1])
    return jax.lax.dynamic_update_slice(buf, (cur + d)[None], (layer, 0, start, 0, 0))


def _mem_blocks(mem_k, mem_v, layer, i, block, mem_len):
    """Block i of the memory (the last one clamped to stay inside the buffer).

    -> (k, v [B, block, KV, D] with slots outside block i or past mem_len zeroed, ok [B, block] bool,
    start). Zeroing makes whatever an unfilled slot holds irrelevant (0 * garbage never appears).
    """
    start = jnp.minimum(i * block, mem_k.shape[-3] - block)
    slots = start + jnp.arange(block)
    ok = (slots[None] >= i * block) & (slots[None] < mem_len[:, None])
    take = lambda m: jnp.where(ok[:, :, None, None], _read(m, layer, start, block), 0)  # noqa: E731
    return take(mem_k), take(mem_v), ok, start


def _mem_trip_count(mem_len, block):
    return (jnp.max(mem_len) + block - 1) // block


def _chunk_mask(valid, q0, q1, k1, causal):
    """[B, q1 - q0, k1] bool for query rows q0..q1 against chunk keys 0..k1."""
    m = jnp.broadcast_to(valid[:, None, :k1], (valid.shape[0], q1 - q0, k1))
    if causal:
        m = m & (jnp.arange(k1)[None, None, :] <= jnp.arange(q0, q1)[None, :, None])
    return m


def _blocks(T, causal):
    """Static (q0, q1, k1) per query block: causal blocks read keys only up to their last row."""
    out = []
    for q0 in range(0, T, CHUNK_BLOCK):
        q1 = min(T, q0 + CHUNK_BLOCK)
        out.append((q0, q1, q1 if causal else T))
    return out


def _forward(q, k, v, valid, mem_k, mem_v, mem_len, layer, causal, scale):
    """-> (out [B, T, H, D] in q.dtype, lse fp32 [B, KV, G, T])."""
    B, T, H, D = q.shape
    KV = k.shape[2]
    G = H // KV
    qg = q.reshape(B, T, KV, G, D)
    m = jnp.full((B, KV, G, T), _NEG, jnp.float32)
    l = jnp.zeros((B, KV, G, T), jnp.float32)
    acc = jnp.zeros((B, KV, G, T, D), jnp.float32)
    if mem_k is not None and mem_k.shape[-3]:
        block = min(MEM_BLOCK, mem_k.shape[-3])

        def body(i, carry):
            m, l, acc = carry
            kb, vb, ok, _ = _mem_blocks(mem_k, mem_v, layer, i, block, mem_len)
            ok = ok[:, None, None, None, :]
            s = _scores(qg, kb.astype(q.dtype), scale)
            m_new = jnp.maximum(m, jnp.max(jnp.where(ok, s, _NEG), axis=-1))
            p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
            corr = jnp.exp(m - m_new)
            return m_new, l * corr + jnp.sum(p, -1), acc * corr[..., None] + _pv(p, vb.astype(v.dtype))

        m, l, acc = jax.lax.fori_loop(0, _mem_trip_count(mem_len, block), body, (m, l, acc))
    outs, lses = [], []
    for q0, q1, k1 in _blocks(T, causal):
        ok = _chunk_mask(valid, q0, q1, k1, causal)[:, None, None]
        s = _scores(qg[:, q0:q1], k[:, :k1], scale)
        mb, lb, ab = m[..., q0:q1], l[..., q0:q1], acc[..., q0:q1, :]
        m_new = jnp.maximum(mb, jnp.max(jnp.where(ok, s, _NEG), axis=-1))
        p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
        corr = jnp.exp(mb - m_new)
        lb = lb * corr + jnp.sum(p, -1)
        ab = ab * corr[..., None] + _pv(p, v[:, :k1])
        safe = jnp.where(lb > 0, lb, 1.0)  # a row that sees nothing (padding) gives 0, not NaN
        outs.append(ab / safe[..., None])
        lses.append(jnp.where(lb > 0, m_new + jnp.log(safe), jnp.inf))
    out = jnp.concatenate(outs, axis=3)  # [B, KV, G, T, D]
    out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(B, T, H, D)
    return out.astype(q.dtype), jnp.concatenate(lses, axis=-1)


def _backward(q, k, v, valid, mem_k, mem_v, mem_len, layer, out, lse, dout, causal, scale):
    """-> (dq, dk, dv, dmem_k, dmem_v) in the primal dtypes."""
    B, T, H, D = q.shape
    KV = k.shape[2]
    G = H // KV
    qg = q.reshape(B, T, KV, G, D)
    do = dout.reshape(B, T, KV, G, D)
    do_t = jnp.transpose(do, (0, 2, 3, 1, 4))  # [B, KV, G, T, D]
    delta = jnp.sum(do_t.astype(jnp.float32) * jnp.transpose(out.reshape(B, T, KV, G, D), (0, 2, 3, 1, 4)), -1)
    dq = jnp.zeros((B, KV, G, T, D), jnp.float32)

    def grads(s, ok, lse_b, do_b, delta_b, qg_b, kb, vb):
        p = jnp.where(ok, jnp.exp(s - lse_b[..., None]), 0.0)
        dv_b = jnp.einsum("bkgts,bkgtd->bskd", p.astype(do_b.dtype), do_b, preferred_element_type=jnp.float32)
        dp = jnp.einsum("bkgtd,bskd->bkgts", do_b, vb, preferred_element_type=jnp.float32)
        ds = p * (dp - delta_b[..., None]) * scale
        dq_b = jnp.einsum("bkgts,bskd->bkgtd", ds.astype(kb.dtype), kb, preferred_element_type=jnp.float32)
        dk_b = jnp.einsum("bkgts,btkgd->bskd", ds.astype(qg_b.dtype), qg_b, preferred_element_type=jnp.float32)
        return dq_b, dk_b, dv_b

    dmem_k = dmem_v = None
    if mem_k is not None and mem_k.shape[-3]:
        block = min(MEM_BLOCK, mem_k.shape[-3])

        def body(i, carry):
            dq, dmk, dmv = carry
            kb, vb, ok, start = _mem_blocks(mem_k, mem_v, layer, i, block, mem_len)
            kb, vb = kb.astype(q.dtype), vb.astype(v.dtype)
            ok = ok[:, None, None, None, :]
            dq_b, dk_b, dv_b = grads(_scores(qg, kb, scale), ok, lse, do_t, delta, qg, kb, vb)
            return dq + dq_b, _add(dmk, layer, start, dk_b), _add(dmv, layer, start, dv_b)

        zeros = jnp.zeros(mem_k.shape, jnp.float32)
        dq, dmem_k, dmem_v = jax.lax.fori_loop(0, _mem_trip_count(mem_len, block), body, (dq, zeros, zeros))
        dmem_k, dmem_v = dmem_k.astype(mem_k.dtype), dmem_v.astype(mem_v.dtype)
    dk = jnp.zeros((B, T, KV, D), jnp.float32)
    dv = jnp.zeros((B, T, KV, D), jnp.float32)
    dq_parts = []
    for q0, q1, k1 in _blocks(T, causal):
        ok = _chunk_mask(valid, q0, q1, k1, causal)[:, None, None]
        qb = qg[:, q0:q1]
        s = _scores(qb, k[:, :k1], scale)
        dq_b, dk_b, dv_b = grads(s, ok, lse[..., q0:q1], do_t[..., q0:q1, :], delta[..., q0:q1], qb,
                                 k[:, :k1], v[:, :k1])
        dq_parts.append(dq[..., q0:q1, :] + dq_b)
        dk = dk.at[:, :k1].add(dk_b)
        dv = dv.at[:, :k1].add(dv_b)
    dq = jnp.transpose(jnp.concatenate(dq_parts, axis=3), (0, 3, 1, 2, 4)).reshape(B, T, H, D)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dmem_k, dmem_v


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _attention(q, k, v, valid, mem_k, mem_v, mem_len, layer, causal, scale):
    return _forward(q, k, v, valid, mem_k, mem_v, mem_len, layer, causal, scale)[0]


def _attention_fwd(q, k, v, valid, mem_k, mem_v, mem_len, layer, causal, scale):
    out, lse = _forward(q, k, v, valid, mem_k, mem_v, mem_len, layer, causal, scale)
    return out, (q, k, v, valid, mem_k, mem_v, mem_len, layer, out, lse)


def _attention_bwd(causal, scale, res, dout):
    q, k, v, valid, mem_k, mem_v, mem_len, layer, out, lse = res
    dq, dk, dv, dmk, dmv = _backward(q, k, v, valid, mem_k, mem_v, mem_len, layer, out, lse, dout, causal, scale)
    return dq, dk, dv, None, dmk, dmv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def blocked_attention(q, k, v, *, valid=None, causal: bool = True, mem_k=None, mem_v=None, mem_len=None,
                      mem_layer=None, scale: float | None = None):
    """Attention of chunk queries over ``[memory[:mem_len] || chunk keys]`` -> [B, T, H, Dh] (q's dtype).

    valid [B, T] bool (default all); causal: chunk row t sees chunk keys t' <= t (else all valid keys);
    mem_k/mem_v [B, M, KV, Dh] (or None) with mem_len [B] int32; or the stacked memory of every layer
    [L, B, M, KV, Dh] with ``mem_layer`` (int32 scalar) naming the layer, read in place. The stacked
    form is for inference: its cotangent is a whole [L, ...] buffer per layer. A row that sees no
    key returns 0.
    """
    B, T, H, D = q.shape
    scale = D ** -0.5 if scale is None else float(scale)
    if valid is None:
        valid = jnp.ones((B, T), bool)
    if mem_k is not None and mem_len is None:
        raise ValueError("mem_len is required with mem_k")
    if mem_k is not None:
        mem_len = mem_len.astype(jnp.int32)
    if (mem_layer is None) != (mem_k is None or mem_k.ndim == 4):
        raise ValueError("a stacked [L, B, M, KV, Dh] memory needs mem_layer, a [B, M, KV, Dh] one must not have it")
    return _attention(q, k, v, valid, mem_k, mem_v, mem_len, mem_layer, bool(causal), scale)
