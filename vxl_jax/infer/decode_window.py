"""The decoding window: what one compiled decode call reads and writes instead of the whole KV memory.

At the start of a call the filled slots of the memory are cut, once, into a window of ``size`` slots
(``length`` plus room for the call's tokens, rounded up to :data:`WINDOW_STEP`): per layer, keys
[B, KV, Dh, S] (slots minor: the scores are one plain matrix product) and values [B, KV, S, Dh],
unfilled slots zeroed. Every token attends over each layer's window in place, then writes its rotated
key and value there at slot ``length``: no per-token copy of the memory (XLA:CPU copies every slice
of a buffer that feeds a matrix product), and a cost set by the filled length, not by the memory's
capacity. At the end of the call the new slots are written back into the memory (:func:`paste`).

Same numbers as the text step over the memory: a token at slot p has position p (docs/algorithm.md
§5), its key is rotated with p, and it sees slots ``[0, p]``.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

from vxl_jax.beacon.memory import KVMemory, write_rows
from vxl_jax.model.rope import rope_tables
from vxl_jax.model.scan import scan_layers
from vxl_jax.infer.results import round_up

WINDOW_STEP = 256  # window sizes are multiples of this (or the memory's capacity): few compilations
# a layer's memory [B, S, KV, Dh] as its window: keys [B, KV, Dh, S], values [B, KV, S, Dh]
_KEY_ORDER, _VALUE_ORDER = (0, 2, 3, 1), (0, 2, 1, 3)


def window_size(longest: int, tokens: int, capacity: int) -> int:
    """Slots a call needs for rows filled up to ``longest`` and ``tokens`` more, rounded up to
    ``WINDOW_STEP``; at most the capacity (a token past it is dropped, as the memory drops it)."""
    return min(capacity, round_up(longest + tokens, WINDOW_STEP))


@flax.struct.dataclass
class DecodeWindow:
    k: tuple  # per layer [B, KV, Dh, S] keys rotated with their slot; slots >= length hold 0
    v: tuple  # per layer [B, KV, S, Dh]
    length: jax.Array  # [B] int32 filled slots

    @property
    def size(self) -> int:
        return self.v[0].shape[2]


def cut(mem: KVMemory, size: int) -> DecodeWindow:
    """The first ``size`` slots of every layer of ``mem`` (see :class:`DecodeWindow`), slots >= length zeroed."""
    filled = (jnp.arange(size)[None, :] < mem.length[:, None])[:, :, None, None]  # [B, S, 1, 1]

    def layers(buf, order):  # [L, B, M, KV, Dh] -> L x [B, M, KV, Dh] cut to size, transposed to ``order``
        return tuple(jnp.transpose(jnp.where(filled, buf[i, :, :size], 0), order) for i in range(buf.shape[0]))

    return DecodeWindow(layers(mem.k, _KEY_ORDER), layers(mem.v, _VALUE_ORDER), mem.length)


def paste(mem: KVMemory, win: DecodeWindow, most: int) -> KVMemory:
    """``mem`` with the slots the window added (``[mem.length, win.length)``, at most ``most`` per row)
    written back; they count as text."""
    t = jnp.arange(most, dtype=jnp.int32)[None, :]
    slots = mem.length[:, None] + t  # [B, most]
    count = win.length - mem.length
    target = jnp.where(t < count[:, None], slots, slots + mem.capacity)  # rows past count are dropped
    at = jnp.minimum(slots, win.size - 1)

    def rows(bufs, order):  # only the new slots, gathered from each window, back to [L, B, most, KV, Dh]
        axis = order.index(1)  # the window's slot axis
        idx = at.reshape(at.shape[:1] + tuple(most if d == axis else 1 for d in range(1, 4)))
        return jnp.stack([jnp.transpose(jnp.take_along_axis(b, idx, axis=axis), _inverse(order)) for b in bufs])

    return mem.replace(k=write_rows(mem.k, rows(win.k, _KEY_ORDER), target),
                       v=write_rows(mem.v, rows(win.v, _VALUE_ORDER), target), length=win.length,
                       n_text=mem.n_text + count)


def _inverse(order):
    return tuple(order.index(d) for d in range(len(order)))


def _write_slot(buf, row, slot, write, axis: int):
    """buf [B, ...] with row [B, KV, Dh] written at index slot[b] of ``axis`` (2 or 3) where write[b].

    Always an in-bounds write (rows not written get their old value back; a slot past the window
    writes nothing): a write that may be dropped turns into a select over the whole buffer, which XLA
    cannot do in place inside the decode loop."""
    S = buf.shape[axis]
    at = jnp.minimum(slot, S - 1)
    old = jnp.take_along_axis(buf, at.reshape((-1,) + (1,) * (buf.ndim - 1)), axis=axis).squeeze(axis)
    row = jnp.where((write & (slot < S))[:, None, None], row.astype(buf.dtype), old)
    dnums = jax.lax.ScatterDimensionNumbers(update_window_dims=(1, 2), inserted_window_dims=(axis,),
                                            scatter_dims_to_operand_dims=(axis,), operand_batching_dims=(0,),
                                            scatter_indices_batching_dims=(0,))
    return jax.lax.scatter(buf, at[:, None], row, dnums, indices_are_sorted=True, unique_indices=True,
                           mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _attend(q, k, v, win_k, win_v, length):
    """One query per row over ``[window slots < length || its own key]``: q [B, H, Dh]; k, v [B, KV, Dh];
    win_k [B, KV, Dh, S], win_v [B, KV, S, Dh] -> [B, H, Dh]. One softmax over both parts in fp32 (the
    window's part is a matrix product, the token's own key is merged in by hand, so the window is only
    read here; the token is written into it afterwards)."""
    B, H, D = q.shape
    KV, S = win_v.shape[1], win_v.shape[2]
    qg = q.reshape(B, KV, H // KV, D)
    scale = D ** -0.5
    s_win = jnp.einsum("bkgd,bkds->bkgs", qg, win_k.astype(q.dtype), preferred_element_type=jnp.float32) * scale
    s_win = jnp.where((jnp.arange(S)[None, :] < length[:, None])[:, None, None, :], s_win, -jnp.inf)
    s_own = jnp.einsum("bkgd,bkd->bkg", qg, k, preferred_element_type=jnp.float32)[..., None] * scale
    m = jnp.maximum(jnp.max(s_win, axis=-1, keepdims=True), s_own)  # finite: the own key is always seen
    p_win, p_own = jnp.exp(s_win - m), jnp.exp(s_own - m)
    total = jnp.sum(p_win, axis=-1, keepdims=True) + p_own
    # normalised before they meet V, in V's dtype, as the reference backend does
    p_win, p_own = (p_win / total).astype(v.dtype), (p_own / total).astype(v.dtype)
    out = jnp.einsum("bkgs,bksd->bkgd", p_win, win_v.astype(v.dtype), preferred_element_type=jnp.float32)
    out = out + (p_own * v[:, :, None, :]).astype(jnp.float32)
    return out.reshape(B, H, D).astype(q.dtype)


def window_step(model, win: DecodeWindow, ids, n):
    """One token per row: ids [B, 1] int32, fed where n[b] == 1 -> (fp32 logits [B, 1, V], window with
    the fed rows' K/V at slot ``length``, and ``length + n``). Rows with n == 0 write nothing.

    The layers run in the usual scan over the stacked weights; layer i picks its own window with a
    ``lax.switch`` (each branch reads one layer's buffers in place: a dynamic index into stacked buffers
    would copy them). The windows are written after the scan, once every layer has read them."""
    lm, cfg = model.lm, model.cfg.lm
    x = lm.embed_tokens(ids, model.compute_dtype)  # [B, 1, D]
    cos, sin = rope_tables(win.length[:, None], cfg.head_dim, cfg.rope_theta)
    reads = [functools.partial(_attend, win_k=wk, win_v=wv, length=win.length) for wk, wv in zip(win.k, win.v)]

    def layer_step(layer, h, i):
        q, k, _, v = layer.project(h, cos=cos, sin=sin)
        a = jax.lax.switch(i, reads, q[:, 0], k[:, 0], v[:, 0])
        return layer.finish(h, a[:, None]), (k[:, 0], v[:, 0])

    x, (ks, vs) = scan_layers(lm.layers, layer_step, x, jnp.arange(cfg.num_layers, dtype=jnp.int32))
    fed = n > 0
    new_k = tuple(_write_slot(w, ks[i], win.length, fed, axis=3) for i, w in enumerate(win.k))
    new_v = tuple(_write_slot(w, vs[i], win.length, fed, axis=2) for i, w in enumerate(win.v))
    return lm.logits(lm.final_norm(x)), DecodeWindow(new_k, new_v, win.length + n.astype(jnp.int32))
