"""Length-aware blocked attention over ``[KV memory (dynamic length) || chunk]``, with its own VJP.

Queries are processed in tiles of ``Q_BLOCK`` rows; each tile walks key tiles: first the memory,
``M_BLOCK`` slots at a time, up to ``ceil(max(mem_len) / M_BLOCK)`` tiles (a dynamic trip count: empty
capacity costs nothing, and tiles are read in place, so the buffer is never copied), then the
chunk, ``K_BLOCK`` keys at a time, only up to the tile's last row when causal (tiles above the diagonal are never computed).
Softmax statistics are merged online (running max and sum in fp32), so no ``[T, M + T]`` score
matrix exists; tiles are small enough to stay in cache. The backward recomputes scores tile by
tile from ``(q, k, v, out, lse)``: nothing quadratic is kept for it. All loops are rolled, so
compile time does not grow with the chunk length.

Shapes: q [B, T, H, Dh]; chunk k, v [B, T, KV, Dh]; memory k, v [B, M, KV, Dh] with ``mem_len``
[B] valid slots (or the stacked [L, B, M, KV, Dh] memory and a layer index); ``valid`` [B, T]
says which chunk keys exist. Query head h reads KV head ``h // (H // KV)``. Statistics are kept
as [B, KV, G, rows] (G = H // KV).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Q_BLOCK = 128  # query rows per tile
K_BLOCK = 128  # chunk keys per tile
M_BLOCK = 512  # memory slots per tile (for a full query tile)
M_BLOCK_MAX = 1024  # memory tiles grow as query tiles shrink (decoding: 1 row), up to this
_NEG = -1e30  # finite "minus infinity" for running maxima (masked entries are zeroed explicitly)


def _scores(qg, k, scale):
    """qg [B, T, KV, G, D], k [B, S, KV, D] -> fp32 [B, KV, G, T, S]."""
    return jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale


def _pv(p, v):
    """p fp32 [B, KV, G, T, S], v [B, S, KV, D] -> fp32 [B, KV, G, T, D]."""
    return jnp.einsum("bkgts,bskd->bkgtd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)


def _rows(x, start, size, axis=1):
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _read(buf, layer, start, block):
    """Slots [start, start + block) of a [B, M, KV, D] buffer, or of layer ``layer`` of a stacked
    [L, B, M, KV, D] buffer (read in place: the layer's buffer is never copied out)."""
    if layer is None:
        return _rows(buf, start, block)
    L, B, M, KV, D = buf.shape
    return jax.lax.dynamic_slice(buf, (layer, 0, start, 0, 0), (1, B, block, KV, D))[0]


def _add(buf, layer, start, d):
    """``buf[(layer,) :, start:start + block] += d`` (d [B, block, KV, D])."""
    cur = _read(buf, layer, start, d.shape[1]) + d
    if layer is None:
        return jax.lax.dynamic_update_slice_in_dim(buf, cur, start, axis=1)
    return jax.lax.dynamic_update_slice(buf, cur[None], (layer, 0, start, 0, 0))


def _mem_tile(mem_k, mem_v, layer, j, block, mem_len, zero_keys: bool = True):
    """Memory tile j (the last one clamped to stay inside the buffer).

    -> (k, v [B, block, KV, D] with slots outside tile j or past mem_len zeroed, ok [B, block] bool,
    start). Zeroing makes whatever an unfilled slot holds irrelevant (0 * garbage never appears).
    The forward masks scores before use, so it skips zeroing the keys (one copy less per tile).
    """
    start = jnp.minimum(j * block, mem_k.shape[-3] - block)
    slots = start + jnp.arange(block)
    ok = (slots[None] >= j * block) & (slots[None] < mem_len[:, None])
    take = lambda m: jnp.where(ok[:, :, None, None], _read(m, layer, start, block), 0)  # noqa: E731
    return (take(mem_k) if zero_keys else _read(mem_k, layer, start, block)), take(mem_v), ok, start


def _trip_count(mem_len, block):
    return (jnp.max(mem_len) + block - 1) // block


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class _Tiling:
    """Static tile sizes for a chunk of T rows and a memory of M slots (queries and chunk keys padded)."""

    def __init__(self, T: int, M: int):
        self.qb = min(Q_BLOCK, T)
        self.nq = _ceil_div(T, self.qb)
        self.kb = min(K_BLOCK, T)
        self.nk = _ceil_div(T, self.kb)
        # fewer query rows -> longer memory tiles (same tile area), so decoding takes few loop steps; the
        # capacity is cut into equal tiles (rounded up to 8 slots) of at most that size, so a memory filled
        # close to its capacity reads little past it (2 990 slots: 3 tiles of 1 000), and more room in the
        # buffer never makes the tiles larger
        most = min(M, max(M_BLOCK, min(M_BLOCK_MAX, M_BLOCK * (Q_BLOCK // self.qb))))
        self.mb = min(M, _ceil_div(_ceil_div(M, _ceil_div(M, most)), 8) * 8) if most else 0

    def chunk_tiles(self, i, causal: bool):
        """Number of chunk key tiles query tile i reads."""
        if not causal:
            return self.nk
        return jnp.minimum(self.nk, ((i + 1) * self.qb + self.kb - 1) // self.kb)


def _pad_rows(x, n):
    return x if x.shape[1] == n else jnp.pad(x, [(0, 0), (0, n - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


def _chunk_ok(valid_p, rows, j, kb, causal):
    """[B, qb, kb] bool: chunk key tile j visible from query rows ``rows``."""
    cols = j * kb + jnp.arange(kb)
    ok = jnp.broadcast_to(_rows(valid_p, j * kb, kb)[:, None, :], (valid_p.shape[0], rows.shape[0], kb))
    if causal:
        ok = ok & (cols[None, None, :] <= rows[None, :, None])
    return ok


def _online(state, s, ok, vb):
    """Merge one tile of scores s [B, KV, G, qb, kb] (visible where ok) into (m, l, acc)."""
    m, l, acc = state
    m_new = jnp.maximum(m, jnp.max(jnp.where(ok, s, _NEG), axis=-1))
    p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
    corr = jnp.exp(m - m_new)
    return m_new, l * corr + jnp.sum(p, -1), acc * corr[..., None] + _pv(p, vb)


def _forward(q, k, v, valid, mem_k, mem_v, mem_len, layer, causal, scale):
    """-> (out [B, T, H, D] in q.dtype, lse fp32 [B, KV, G, T])."""
    B, T, H, D = q.shape
    KV = k.shape[2]
    G = H // KV
    tl = _Tiling(T, 0 if mem_k is None else mem_k.shape[-3])
    qg = _pad_rows(q.reshape(B, T, KV, G, D), tl.nq * tl.qb)
    k_p, v_p = _pad_rows(k, tl.nk * tl.kb), _pad_rows(v, tl.nk * tl.kb)
    valid_p = _pad_rows(valid, tl.nk * tl.kb)

    def tile(i):
        q_i = _rows(qg, i * tl.qb, tl.qb)
        rows = i * tl.qb + jnp.arange(tl.qb)
        state = (jnp.full((B, KV, G, tl.qb), _NEG, jnp.float32), jnp.zeros((B, KV, G, tl.qb), jnp.float32),
                 jnp.zeros((B, KV, G, tl.qb, D), jnp.float32))
        if tl.mb:
            def mem_step(j, st):
                kb, vb, ok, _ = _mem_tile(mem_k, mem_v, layer, j, tl.mb, mem_len, zero_keys=False)
                return _online(st, _scores(q_i, kb.astype(q.dtype), scale), ok[:, None, None, None, :],
                               vb.astype(v.dtype))

            state = jax.lax.fori_loop(0, _trip_count(mem_len, tl.mb), mem_step, state)

        def chunk_step(j, st):
            ok = _chunk_ok(valid_p, rows, j, tl.kb, causal)[:, None, None]
            return _online(st, _scores(q_i, _rows(k_p, j * tl.kb, tl.kb), scale), ok, _rows(v_p, j * tl.kb, tl.kb))

        m, l, acc = jax.lax.fori_loop(0, tl.chunk_tiles(i, causal), chunk_step, state)
        safe = jnp.where(l > 0, l, 1.0)  # a row that sees nothing (padding) gives 0, not NaN
        return acc / safe[..., None], jnp.where(l > 0, m + jnp.log(safe), jnp.inf)

    outs, lses = jax.lax.map(tile, jnp.arange(tl.nq))  # [nq, B, KV, G, qb, (D)]
    out = jnp.transpose(outs, (1, 0, 4, 2, 3, 5)).reshape(B, tl.nq * tl.qb, H, D)[:, :T]
    lse = jnp.transpose(lses, (1, 2, 3, 0, 4)).reshape(B, KV, G, tl.nq * tl.qb)[..., :T]
    return out.astype(q.dtype), lse


def _tile_grads(s, ok, lse_i, do_i, delta_i, q_i, kb, vb, scale):
    """Gradients of one tile -> (dq [B, KV, G, qb, D], dk [B, kb, KV, D], dv [B, kb, KV, D]) in fp32."""
    p = jnp.where(ok, jnp.exp(s - lse_i[..., None]), 0.0)
    dv = jnp.einsum("bkgts,bkgtd->bskd", p.astype(do_i.dtype), do_i, preferred_element_type=jnp.float32)
    dp = jnp.einsum("bkgtd,bskd->bkgts", do_i, vb, preferred_element_type=jnp.float32)
    ds = p * (dp - delta_i[..., None]) * scale
    dq = jnp.einsum("bkgts,bskd->bkgtd", ds.astype(kb.dtype), kb, preferred_element_type=jnp.float32)
    dk = jnp.einsum("bkgts,btkgd->bskd", ds.astype(q_i.dtype), q_i, preferred_element_type=jnp.float32)
    return dq, dk, dv


def _backward(q, k, v, valid, mem_k, mem_v, mem_len, layer, out, lse, dout, causal, scale):
    """-> (dq, dk, dv, dmem_k, dmem_v) in the primal dtypes."""
    B, T, H, D = q.shape
    KV = k.shape[2]
    G = H // KV
    tl = _Tiling(T, 0 if mem_k is None else mem_k.shape[-3])
    Tq, Tk = tl.nq * tl.qb, tl.nk * tl.kb
    qg = _pad_rows(q.reshape(B, T, KV, G, D), Tq)
    do_t = jnp.transpose(_pad_rows(dout.reshape(B, T, KV, G, D), Tq), (0, 2, 3, 1, 4))  # [B, KV, G, Tq, D]
    out_t = jnp.transpose(_pad_rows(out.reshape(B, T, KV, G, D), Tq), (0, 2, 3, 1, 4))
    delta = jnp.sum(do_t.astype(jnp.float32) * out_t.astype(jnp.float32), -1)  # [B, KV, G, Tq]
    lse_p = jnp.pad(lse, [(0, 0)] * 3 + [(0, Tq - T)], constant_values=jnp.inf)
    k_p, v_p, valid_p = _pad_rows(k, Tk), _pad_rows(v, Tk), _pad_rows(valid, Tk)

    def tile(i, carry):
        dq_all, dk_c, dv_c, dmk, dmv = carry
        q_i = _rows(qg, i * tl.qb, tl.qb)
        rows = i * tl.qb + jnp.arange(tl.qb)
        lse_i, do_i, delta_i = (_rows(lse_p, i * tl.qb, tl.qb, 3), _rows(do_t, i * tl.qb, tl.qb, 3),
                                _rows(delta, i * tl.qb, tl.qb, 3))
        dq_i = jnp.zeros((B, KV, G, tl.qb, D), jnp.float32)
        if tl.mb:
            def mem_step(j, c):
                dq_i, dmk, dmv = c
                kb, vb, ok, start = _mem_tile(mem_k, mem_v, layer, j, tl.mb, mem_len)
                kb, vb = kb.astype(q.dtype), vb.astype(v.dtype)
                dq_b, dk_b, dv_b = _tile_grads(_scores(q_i, kb, scale), ok[:, None, None, None, :], lse_i, do_i,
                                               delta_i, q_i, kb, vb, scale)
                return dq_i + dq_b, _add(dmk, layer, start, dk_b), _add(dmv, layer, start, dv_b)

            dq_i, dmk, dmv = jax.lax.fori_loop(0, _trip_count(mem_len, tl.mb), mem_step, (dq_i, dmk, dmv))

        def chunk_step(j, c):
            dq_i, dk_c, dv_c = c
            kb, vb = _rows(k_p, j * tl.kb, tl.kb), _rows(v_p, j * tl.kb, tl.kb)
            ok = _chunk_ok(valid_p, rows, j, tl.kb, causal)[:, None, None]
            dq_b, dk_b, dv_b = _tile_grads(_scores(q_i, kb, scale), ok, lse_i, do_i, delta_i, q_i, kb, vb, scale)
            return dq_i + dq_b, _add(dk_c, None, j * tl.kb, dk_b), _add(dv_c, None, j * tl.kb, dv_b)

        dq_i, dk_c, dv_c = jax.lax.fori_loop(0, tl.chunk_tiles(i, causal), chunk_step, (dq_i, dk_c, dv_c))
        dq_all = jax.lax.dynamic_update_slice_in_dim(dq_all, dq_i, i * tl.qb, axis=3)
        return dq_all, dk_c, dv_c, dmk, dmv

    zeros_c = jnp.zeros((B, Tk, KV, D), jnp.float32)
    zeros_m = jnp.zeros(mem_k.shape, jnp.float32) if tl.mb else None
    carry = (jnp.zeros((B, KV, G, Tq, D), jnp.float32), zeros_c, zeros_c, zeros_m, zeros_m)
    dq, dk, dv, dmk, dmv = jax.lax.fori_loop(0, tl.nq, tile, carry)
    dq = jnp.transpose(dq, (0, 3, 1, 2, 4)).reshape(B, Tq, H, D)[:, :T]
    if tl.mb:
        dmk, dmv = dmk.astype(mem_k.dtype), dmv.astype(mem_v.dtype)
    elif mem_k is not None:
        dmk, dmv = jnp.zeros_like(mem_k), jnp.zeros_like(mem_v)
    return dq.astype(q.dtype), dk[:, :T].astype(k.dtype), dv[:, :T].astype(v.dtype), dmk, dmv


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


def checked_arguments(q, valid, mem_k, mem_len, mem_layer, scale):
    """The argument rules every [memory || chunk] attention kernel shares -> (scale, valid [B, T] bool,
    mem_len int32 [B] or None); raises ValueError for a memory without lengths or a mis-declared layer."""
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
    return scale, valid, mem_len


def blocked_attention(q, k, v, *, valid=None, causal: bool = True, mem_k=None, mem_v=None, mem_len=None,
                      mem_layer=None, scale: float | None = None):
    """Attention of chunk queries over ``[memory[:mem_len] || chunk keys]`` -> [B, T, H, Dh] (q's dtype).

    valid [B, T] bool (default all); causal: chunk row t sees chunk keys t' <= t (else all valid keys);
    mem_k/mem_v [B, M, KV, Dh] (or None) with mem_len [B] int32; or the stacked memory of every layer
    [L, B, M, KV, Dh] with ``mem_layer`` (int32 scalar) naming the layer, read in place. The stacked
    form is for inference: its cotangent is a whole [L, ...] buffer per layer. A row that sees no
    key returns 0.
    """
    scale, valid, mem_len = checked_arguments(q, valid, mem_k, mem_len, mem_layer, scale)
    return _attention(q, k, v, valid, mem_k, mem_v, mem_len, mem_layer, bool(causal), scale)


backward = _backward  # the gradient of any kernel that gives blocked's (out, lse): the ``pallas`` backend's VJP
forward = _forward  # (out, lse) for the same inputs: the pallas backend's forward where its kernel does not tile
