"""Backward of the ``pallas`` attention kernel: three Pallas calls recomputing scores tile by tile from
``(q, k, v, lse)`` and ``delta = rowsum(dout * out)`` (nothing quadratic is kept).

- dq: grid (batch, query tile, key tile) as the forward; skips memory tiles past the length and
  chunk tiles above the causal diagonal.
- d(memory k, v): grid (batch, memory tile, query tile); tiles past the length are written as zeros
  without reading anything.
- d(chunk k, v): grid (batch, chunk tile, query tile); query tiles wholly above the diagonal skipped.

Key/value gradients are accumulated per KV head over its query heads in fp32 and written
head-major (``[B, KV, n, Dh]``, no strided stores); the caller transposes them back. Masking as the
forward; memory slots past the length (which may hold anything) are zeroed before use.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from vxl_jax.model.pallas_tiles import Operands, Plan, head_rows, pad_rows, tiled_operands


def _tile_probs(q_ref, do_ref, lse_ref, delta_ref, k, v, ok, h, D, scale):
    """For head h over one key tile: (p, ds) fp32 [tq, n] (ds already scaled)."""
    lanes = slice(h * D, (h + 1) * D)
    s = jax.lax.dot_general(q_ref[:, lanes], k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
    p = jnp.where(ok, jnp.exp(s - lse_ref[:, h:h + 1]), 0.0)
    dp = jax.lax.dot_general(do_ref[:, lanes], v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return p, p * (dp - delta_ref[:, h:h + 1]) * scale


def _heads(k_tile, v_tile, n, KV, dtype, key_ok):
    """Per-KV-head key and value rows of a slot-major tile; rows not key_ok ([n, 1]) zeroed."""
    for kv in range(KV):
        k = head_rows(k_tile, kv, KV, n).astype(dtype)
        v = head_rows(v_tile, kv, KV, n).astype(dtype)
        if key_ok is not None:
            k, v = jnp.where(key_ok, k, 0), jnp.where(key_ok, v, 0)
        yield kv, k, v


def _dq_kernel(mem_len_ref, layer_ref, *refs, plan: Plan, has_mem, causal, scale, KV, G, D):
    if has_mem:
        q_ref, do_ref, lse_ref, delta_ref, mk_ref, mv_ref, k_ref, v_ref, valid_ref, dq_ref, acc = refs
    else:
        q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, valid_ref, dq_ref, acc = refs
    b, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)

    @pl.when(j == 0)
    def _init():
        acc[...] = jnp.zeros(acc.shape, jnp.float32)

    def add(k_tile, v_tile, n, ok, key_ok=None):
        for kv, k, v in _heads(k_tile, v_tile, n, KV, q_ref.dtype, key_ok):
            for g in range(G):
                h = kv * G + g
                _, ds = _tile_probs(q_ref, do_ref, lse_ref, delta_ref, k, v, ok, h, D, scale)
                acc[:, h * D:(h + 1) * D] += jax.lax.dot_general(
                    ds.astype(k.dtype), k, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)

    if has_mem:
        mem_len = mem_len_ref[b]

        @pl.when((j < plan.n_mem) & (j * plan.mb < mem_len))
        def _memory():
            add(mk_ref, mv_ref, plan.mb, *plan.memory_visible(j, mem_len))

    c = j - plan.n_mem

    @pl.when((c >= 0) & (c <= plan.last_chunk_tile(i, causal)))
    def _chunk():
        add(k_ref, v_ref, plan.kb, plan.chunk_visible(valid_ref, i, c, causal))

    @pl.when(j == pl.num_programs(2) - 1)
    def _finish():
        dq_ref[...] = acc[...].astype(dq_ref.dtype)


def _dkv_kernel(mem_len_ref, layer_ref, q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, valid_ref, dk_ref, dv_ref,
                dk_acc, dv_acc, *, plan: Plan, memory, causal, scale, KV, G, D):
    """Gradients of one key tile j (memory or chunk) summed over query tiles i (the last grid axis)."""
    b, j, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    n = plan.mb if memory else plan.kb

    @pl.when(i == 0)
    def _init():
        dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

    def add(ok, key_ok=None):
        for kv, k, v in _heads(k_ref, v_ref, n, KV, q_ref.dtype, key_ok):
            dk = dv = 0.0
            for g in range(G):
                h = kv * G + g
                p, ds = _tile_probs(q_ref, do_ref, lse_ref, delta_ref, k, v, ok, h, D, scale)
                lanes = slice(h * D, (h + 1) * D)
                dk = dk + jax.lax.dot_general(ds.astype(q_ref.dtype), q_ref[:, lanes], (((0,), (0,)), ((), ())),
                                              preferred_element_type=jnp.float32)
                dv = dv + jax.lax.dot_general(p.astype(do_ref.dtype), do_ref[:, lanes], (((0,), (0,)), ((), ())),
                                              preferred_element_type=jnp.float32)
            dk_acc[kv] += dk
            dv_acc[kv] += dv

    if memory:
        mem_len = mem_len_ref[b]

        @pl.when(j * plan.mb < mem_len)
        def _memory():
            add(*plan.memory_visible(j, mem_len))
    else:
        @pl.when(j <= plan.last_chunk_tile(i, causal))
        def _chunk():
            add(plan.chunk_visible(valid_ref, i, j, causal))

    @pl.when(i == pl.num_programs(2) - 1)
    def _finish():
        dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def backward(q, k, v, valid, mem_k, mem_v, mem_len, layer, out, lse, dout, *, causal: bool, scale: float,
             plan: Plan, interpret: bool):
    """-> (dq, dk, dv, dmem_k, dmem_v) in the primal dtypes; lse fp32 [B, T, H] (+inf: row sees nothing)."""
    B, T, H, D = q.shape
    KV = k.shape[2]
    ops = tiled_operands(plan, q, k, v, valid, mem_k, mem_v, mem_len, layer)
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), -1)  # [B, T, H]
    rows = [ops.q, pad_rows(dout.astype(q.dtype).reshape(B, T, H * D), plan.tq_pad),
            jnp.pad(lse, [(0, 0), (0, plan.tq_pad - T), (0, 0)], constant_values=jnp.inf),
            pad_rows(delta, plan.tq_pad)]
    static = dict(plan=plan, causal=causal, scale=scale, KV=KV, G=H // KV, D=D)
    dq = _dq_call(ops, rows, q.dtype, static, interpret)[:, :T].reshape(B, T, H, D)
    dk, dv = _dkv_call(ops, rows, False, static, interpret)
    dk, dv = _key_major(dk, T, k.dtype), _key_major(dv, T, v.dtype)
    dmk = dmv = None
    if mem_k is not None:
        M = mem_k.shape[-3]
        dmk, dmv = _dkv_call(ops, rows, True, static, interpret)
        dmk, dmv = _key_major(dmk, M, mem_k.dtype), _key_major(dmv, M, mem_v.dtype)
        if mem_k.ndim == 5:  # stacked memory: the cotangent is the whole buffer, this layer's slice set
            dmk = jax.lax.dynamic_update_slice(jnp.zeros_like(mem_k), dmk[None], (layer, 0, 0, 0, 0))
            dmv = jax.lax.dynamic_update_slice(jnp.zeros_like(mem_v), dmv[None], (layer, 0, 0, 0, 0))
    return dq, dk, dv, dmk, dmv


_PARAMS = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _row_specs(plan: Plan, H: int, D: int, tile):
    """Block specs of q, dout [tq, H * D] and lse, delta [tq, H] at query tile ``tile(*grid index, *scalars)``."""
    full = pl.BlockSpec((None, plan.tq, H * D), lambda *g: (g[0], tile(*g), 0))
    stat = pl.BlockSpec((None, plan.tq, H), lambda *g: (g[0], tile(*g), 0))
    return [full, full, stat, stat]


def _dq_call(ops: Operands, rows: list, dtype, static: dict, interpret: bool):
    """dq [B, tq_pad, H * D] in ``dtype``: the forward's grid (batch, query tile, memory then chunk key tiles)."""
    plan, KV, D = static["plan"], static["KV"], static["D"]
    B, H = ops.q.shape[0], KV * static["G"]
    has_mem = ops.mem_k is not None
    in_specs = _row_specs(plan, H, D, lambda b, i, j, lens, ly: i)
    args = list(rows)
    if has_mem:
        spec = pl.BlockSpec((1, 1, plan.mb * KV, D), lambda b, i, j, lens, ly: (ly[0], b, plan.mem_tile(b, j, lens), 0))
        in_specs += [spec, spec]
        args += [ops.mem_k, ops.mem_v]
    chunk_tile = lambda i, j: plan.chunk_tile(i, j, static["causal"])  # noqa: E731
    kv_spec = pl.BlockSpec((1, plan.kb * KV, D), lambda b, i, j, lens, ly: (b, chunk_tile(i, j), 0))
    in_specs += [kv_spec, kv_spec, pl.BlockSpec((None, 1, plan.kb), lambda b, i, j, lens, ly: (b, 0, chunk_tile(i, j)))]
    args += [ops.k, ops.v, ops.valid]
    return pl.pallas_call(
        functools.partial(_dq_kernel, has_mem=has_mem, **static),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(B, plan.nq, plan.n_mem + plan.nk), in_specs=in_specs,
            out_specs=pl.BlockSpec((None, plan.tq, H * D), lambda b, i, j, lens, ly: (b, i, 0)),
            scratch_shapes=[pltpu.VMEM((plan.tq, H * D), jnp.float32)]),
        out_shape=jax.ShapeDtypeStruct((B, plan.tq_pad, H * D), dtype),
        compiler_params=_PARAMS, interpret=interpret, name="vxl_attention_dq",
    )(ops.mem_len, ops.layer, *args)


def _dkv_call(ops: Operands, rows: list, memory: bool, static: dict, interpret: bool):
    """(dk, dv) fp32 head-major [B, KV, n_tiles * n, D] of the memory (``memory``) or of the chunk: grid
    (batch, key tile, query tile)."""
    plan, KV, D, causal = static["plan"], static["KV"], static["D"], static["causal"]
    B, H = ops.q.shape[0], KV * static["G"]
    n, count = (plan.mb, plan.n_mem) if memory else (plan.kb, plan.nk)
    if memory:  # query tiles of a tile past the length are never read: keep the block index still
        q_tile = lambda b, j, i, lens, ly: jnp.where(j * plan.mb < lens[b], i, 0)  # noqa: E731
        key = pl.BlockSpec((1, 1, n * KV, D), lambda b, j, i, lens, ly: (ly[0], b, plan.mem_tile(b, j, lens), 0))
        keys = [ops.mem_k, ops.mem_v]
    else:  # query tiles above the diagonal are skipped: start at the first one that sees tile j
        first = lambda j: jax.lax.div(j * plan.kb, plan.tq) if causal else 0  # noqa: E731
        q_tile = lambda b, j, i, lens, ly: jnp.maximum(i, first(j))  # noqa: E731
        key = pl.BlockSpec((1, n * KV, D), lambda b, j, i, lens, ly: (b, j, 0))
        keys = [ops.k, ops.v]
    valid_spec = pl.BlockSpec((None, 1, plan.kb), lambda b, j, i, lens, ly: (b, 0, 0 if memory else j))
    grad = pl.BlockSpec((None, KV, n, D), lambda b, j, i, lens, ly: (b, 0, j, 0))
    shape = jax.ShapeDtypeStruct((B, KV, count * n, D), jnp.float32)
    return pl.pallas_call(
        functools.partial(_dkv_kernel, memory=memory, **static),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(B, count, plan.nq),
            in_specs=_row_specs(plan, H, D, q_tile) + [key, key, valid_spec], out_specs=[grad, grad],
            scratch_shapes=[pltpu.VMEM((KV, n, D), jnp.float32), pltpu.VMEM((KV, n, D), jnp.float32)]),
        out_shape=[shape, shape], compiler_params=_PARAMS, interpret=interpret,
        name="vxl_attention_dmem" if memory else "vxl_attention_dkv",
    )(ops.mem_len, ops.layer, *rows, *keys, ops.valid)


def _key_major(x, n: int, dtype):
    """Head-major fp32 [B, KV, n', D] -> [B, n, KV, D] in ``dtype`` (the first n of n' padded rows)."""
    return jnp.swapaxes(x[:, :, :n], 1, 2).astype(dtype)
