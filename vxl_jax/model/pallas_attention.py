"""Pallas attention kernel over ``[KV memory (dynamic length) || chunk]`` (the ``pallas`` backend).

One grid step handles one (batch row b, query tile, key tile), all heads: key tiles run along the
last grid axis, first the memory, ``mb`` slots a tile, then the chunk, ``kb`` keys a tile, merging
softmax statistics online (fp32). The memory length ``mem_len[b]`` and the stacked-memory layer
index are scalar-prefetched: tiles at or past the length are neither fetched (their block index
is clamped to the last needed one, so the pipeline issues no copy) nor computed, and chunk tiles
wholly above the causal diagonal likewise. The memory is read in place: ``[(L,) B, M, KV, Dh]``
viewed as ``[L, B, M * KV, Dh]`` (slot-major rows; the same bytes in TPU's tiled layout, so a
bitcast, not a copy); each KV head's rows are strided loads of one tile, shared by its
``G = H // KV`` query heads (lane blocks of ``q`` viewed as ``[B, T, H * Dh]``). Under
:class:`vxl_jax.runtime.sharding.activation_sharding` the call runs per shard (``shard_map`` over the
batch and KV-head axes).

On TPU this compiles with Mosaic (Dh a multiple of 128, ``block_k`` a multiple of 128,
``block_q`` and ``block_mem`` multiples of 8; other head shapes take the blocked forward there); on
CPU it runs in Pallas interpret mode (for tests: correct but slow); on GPUs the blocked path runs
(use the ``cudnn`` backend there). The choice is made when lowering, so ahead-of-time TPU compiles from a CPU
host get the kernel. Gradients: a custom VJP whose backward is three more Pallas kernels
(:mod:`vxl_jax.model.pallas_attention_bwd`: dq, d memory, d chunk) recomputing scores from the
forward's log-sum-exp (no score matrix is kept); where the forward takes the blocked path, so does
the backward.

Masking equals :func:`vxl_jax.model.blocked.blocked_attention`: memory slot j visible iff
``j < mem_len[b]``; chunk key t' iff ``valid[b, t']`` (and ``t' <= t`` when causal); a row that sees
no key returns 0 (its log-sum-exp is +inf).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from vxl_jax.runtime import sharding as sh
from vxl_jax.model import blocked
from vxl_jax.model.pallas_attention_bwd import backward as pallas_backward
from vxl_jax.model.pallas_tiles import NEG, Plan, head_rows, tiled_operands

BLOCK_Q = 256  # query rows per tile (shrunk to fit the chunk; multiple of 8)
BLOCK_K = 256  # chunk keys per tile (multiple of 128 on TPU)
BLOCK_MEM = 512  # memory slots per tile for a full query tile (multiple of 8)
ACC_BYTES = 4 << 20  # query tiles shrink so the fp32 accumulator [tq, H * Dh] stays within this (VMEM)


def _kernel(mem_len_ref, layer_ref, *refs, plan: Plan, has_mem: bool, causal: bool, scale: float, KV: int,
            G: int, D: int):
    """One (batch row b, query tile i, key step j) step: key steps run over the memory tiles, then the chunk
    tiles; running max / sum / output of every head live in scratch until the last step writes them out."""
    if has_mem:
        q_ref, mk_ref, mv_ref, k_ref, v_ref, valid_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc = refs
    else:
        q_ref, k_ref, v_ref, valid_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc = refs
    b, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, NEG, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    def merge(k_tile, v_tile, n, ok, key_ok=None):
        """Fold a key tile (refs [n * KV, D], slot-major: row s * KV + kv) visible where ok [tq, n] into
        the statistics of every head; key_ok [n, 1] zeroes values of keys that may hold anything."""
        for kv in range(KV):
            k = head_rows(k_tile, kv, KV, n).astype(q_ref.dtype)
            v = head_rows(v_tile, kv, KV, n).astype(q_ref.dtype)
            if key_ok is not None:
                v = jnp.where(key_ok, v, 0)
            for g in range(G):
                _fold_head(q_ref, k, v, ok, kv * G + g, D, scale, m_sc, l_sc, acc_sc)

    if has_mem:
        mem_len = mem_len_ref[b]

        @pl.when((j < plan.n_mem) & (j * plan.mb < mem_len))
        def _memory():
            # unfilled slots (and the tail of a partial last tile) may hold anything: zero their values
            merge(mk_ref, mv_ref, plan.mb, *plan.memory_visible(j, mem_len))

    c = j - plan.n_mem

    @pl.when((c >= 0) & (c <= plan.last_chunk_tile(i, causal)))
    def _chunk():
        merge(k_ref, v_ref, plan.kb, plan.chunk_visible(valid_ref, i, c, causal))

    @pl.when(j == pl.num_programs(2) - 1)
    def _finish():
        _write_output(o_ref, lse_ref, m_sc, l_sc, acc_sc, KV * G, D)


def _fold_head(q_ref, k, v, ok, h: int, D: int, scale: float, m_sc, l_sc, acc_sc):
    """Online-softmax update of head h's running max / sum / output (scratch refs) with one key tile:
    k, v [n, D] of its KV head, visible where ok [tq, n]."""
    lanes = slice(h * D, (h + 1) * D)
    s = jax.lax.dot_general(q_ref[:, lanes], k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
    s = jnp.where(ok, s, NEG)
    m_prev = m_sc[:, h:h + 1]
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=-1, keepdims=True))
    p = jnp.where(ok, jnp.exp(s - m_new), 0.0)
    corr = jnp.exp(m_prev - m_new)
    l_sc[:, h:h + 1] = l_sc[:, h:h + 1] * corr + jnp.sum(p, axis=-1, keepdims=True)
    acc_sc[:, lanes] = acc_sc[:, lanes] * corr + jax.lax.dot_general(
        p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    m_sc[:, h:h + 1] = m_new


def _write_output(o_ref, lse_ref, m_sc, l_sc, acc_sc, H: int, D: int):
    """Normalized output [tq, H * D] and log-sum-exp [tq, H] of every head from the running statistics."""
    for h in range(H):
        l = l_sc[:, h:h + 1]
        safe = jnp.where(l > 0, l, 1.0)  # a row that sees nothing gives 0, not NaN
        o_ref[:, h * D:(h + 1) * D] = (acc_sc[:, h * D:(h + 1) * D] / safe).astype(o_ref.dtype)
        lse_ref[:, h:h + 1] = jnp.where(l > 0, m_sc[:, h:h + 1] + jnp.log(safe), jnp.inf)


def _forward(q, k, v, valid, mem_k, mem_v, mem_len, layer, causal, scale, blocks, interpret):
    """-> (out [B, T, H, D] in q.dtype, lse fp32 [B, KV, G, T]) (lse as :mod:`blocked` keeps it).

    ``interpret`` None: chosen when lowering (``lax.platform_dependent``, so an ahead-of-time TPU
    compile from a CPU host gets the Mosaic kernel): Mosaic on TPU (or the blocked forward for head
    shapes the kernel does not tile there), interpret mode on CPU (tests), the blocked forward on
    GPUs (interpreting a TPU kernel there would be slow; use ``cudnn``).
    """
    args = (q, k, v, valid, mem_k, mem_v, mem_len, layer)
    return _by_platform(args, functools.partial(_call_kernel, causal=causal, scale=scale, blocks=blocks),
                        functools.partial(_call_blocked, causal=causal, scale=scale), interpret)


def _by_platform(args, kernel, fallback, interpret):
    """``kernel(*args, interpret=interpret)``; with ``interpret`` None, chosen when lowering: the Mosaic kernel on
    TPU when it tiles these shapes (else ``fallback(*args)``), interpret mode on CPU, ``fallback`` elsewhere.
    ``args`` start with (q, k, v, valid, mem_k)."""
    if interpret is not None:
        return kernel(*args, interpret=interpret)
    q, k, mem_k = args[0], args[1], args[4]
    on_tpu = tpu_supported(q.shape[-1], k.shape[2], *_kv_dtypes(k, mem_k))
    return jax.lax.platform_dependent(*args, tpu=functools.partial(kernel, interpret=False) if on_tpu else fallback,
                                      cpu=functools.partial(kernel, interpret=True), default=fallback)


def _call_kernel(*args, causal, scale, blocks, interpret):
    return _kernel_forward(*args, causal, scale, blocks, interpret)


def _call_blocked(*args, causal, scale):
    return blocked.forward(*args, causal, scale)


def _kernel_forward(q, k, v, valid, mem_k, mem_v, mem_len, layer, causal, scale, blocks, interpret):
    """The Pallas call: -> (out, lse) as :func:`_forward`."""
    B, T, H, D = q.shape
    KV = k.shape[2]
    G = H // KV
    has_mem = mem_k is not None
    M = mem_k.shape[-3] if has_mem else 0
    plan = _plan(q, M, blocks)
    ops = tiled_operands(plan, q, k, v, valid, mem_k, mem_v, mem_len, layer)
    q_spec = pl.BlockSpec((None, plan.tq, H * D), lambda b, i, j, lens, lyr: (b, i, 0))
    in_specs, args = [q_spec], [ops.q]
    if has_mem:
        mem_spec = pl.BlockSpec((1, 1, plan.mb * KV, D),
                                lambda b, i, j, lens, lyr: (lyr[0], b, plan.mem_tile(b, j, lens), 0))
        in_specs += [mem_spec, mem_spec]
        args += [ops.mem_k, ops.mem_v]
    kv_spec = pl.BlockSpec((1, plan.kb * KV, D), lambda b, i, j, lens, lyr: (b, plan.chunk_tile(i, j, causal), 0))
    valid_spec = pl.BlockSpec((None, 1, plan.kb), lambda b, i, j, lens, lyr: (b, 0, plan.chunk_tile(i, j, causal)))
    in_specs += [kv_spec, kv_spec, valid_spec]
    args += [ops.k, ops.v, ops.valid]

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(B, plan.nq, plan.n_mem + plan.nk),
        in_specs=in_specs,
        out_specs=[q_spec, pl.BlockSpec((None, plan.tq, H), lambda b, i, j, lens, lyr: (b, i, 0))],
        scratch_shapes=[pltpu.VMEM((plan.tq, H), jnp.float32), pltpu.VMEM((plan.tq, H), jnp.float32),  # max, sum
                        pltpu.VMEM((plan.tq, H * D), jnp.float32)],
    )
    kernel = functools.partial(_kernel, plan=plan, has_mem=has_mem, causal=causal, scale=scale, KV=KV, G=G, D=D)
    out, lse = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct((B, plan.tq_pad, H * D), q.dtype),
                   jax.ShapeDtypeStruct((B, plan.tq_pad, H), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="vxl_memory_chunk_attention",
    )(ops.mem_len, ops.layer, *args)
    out = out[:, :T].reshape(B, T, H, D)
    return out, jnp.transpose(lse[:, :T].reshape(B, T, KV, G), (0, 2, 3, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10, 11))
def _attention(q, k, v, valid, mem_k, mem_v, mem_len, layer, causal, scale, blocks, interpret):
    return _forward(q, k, v, valid, mem_k, mem_v, mem_len, layer, causal, scale, blocks, interpret)[0]


def _attention_fwd(q, k, v, valid, mem_k, mem_v, mem_len, layer, causal, scale, blocks, interpret):
    out, lse = _forward(q, k, v, valid, mem_k, mem_v, mem_len, layer, causal, scale, blocks, interpret)
    return out, (q, k, v, valid, mem_k, mem_v, mem_len, layer, out, lse)


def _attention_bwd(causal, scale, blocks, interpret, res, dout):
    q, k, v, valid, mem_k, mem_v, mem_len, layer, out, lse = res
    args = (q, k, v, valid, mem_k, mem_v, mem_len, layer, out, lse, dout)
    dq, dk, dv, dmk, dmv = _by_platform(args, functools.partial(_kernel_backward, causal=causal, scale=scale,
                                                                blocks=blocks),
                                        functools.partial(_blocked_backward, causal=causal, scale=scale), interpret)
    return dq, dk, dv, None, dmk, dmv, None, None


def _kernel_backward(q, k, v, valid, mem_k, mem_v, mem_len, layer, out, lse, dout, *, causal, scale, blocks,
                     interpret):
    B, T, H, _ = q.shape
    plan = _plan(q, 0 if mem_k is None else mem_k.shape[-3], blocks)
    lse_rows = jnp.transpose(lse, (0, 3, 1, 2)).reshape(B, T, H)  # blocked's [B, KV, G, T] -> [B, T, H]
    return pallas_backward(q, k, v, valid, mem_k, mem_v, mem_len, layer, out, lse_rows, dout, causal=causal,
                           scale=scale, plan=plan, interpret=interpret)


def _blocked_backward(*args, causal, scale):
    return blocked.backward(*args, causal, scale)


def _plan(q, M: int, blocks) -> Plan:
    """Tiles for q [B, T, H, Dh] over M memory slots; query tiles shrink to keep the fp32 accumulator
    [tq, H * Dh] within ACC_BYTES."""
    _, T, H, D = q.shape
    block_q, block_k, block_mem = blocks
    return Plan(T, M, min(block_q, max(8, ACC_BYTES // (H * D * 4) // 8 * 8)), block_k, block_mem)


def _kv_dtypes(k, mem_k):
    return (k.dtype,) if mem_k is None else (k.dtype, mem_k.dtype)


_attention.defvjp(_attention_fwd, _attention_bwd)


def pallas_attention(q, k, v, *, valid=None, causal: bool = True, mem_k=None, mem_v=None, mem_len=None,
                     mem_layer=None, scale: float | None = None, block_q: int = BLOCK_Q, block_k: int = BLOCK_K,
                     block_mem: int = BLOCK_MEM, interpret: bool | None = None):
    """Attention of chunk queries over ``[memory[:mem_len] || chunk keys]`` -> [B, T, H, Dh] (q's dtype).

    Same arguments and result as :func:`vxl_jax.model.blocked.blocked_attention` (q [B, T, H, Dh];
    k, v [B, T, KV, Dh]; valid [B, T]; mem_k/mem_v [B, M, KV, Dh] with mem_len [B], or stacked
    [L, B, M, KV, Dh] with the int32 scalar ``mem_layer``). Block sizes are tile sizes (see the module
    docstring); ``interpret`` None (default): the Mosaic kernel when lowered for TPU (the blocked path
    where :func:`tpu_supported` says the kernel does not tile), interpret mode on CPU, the blocked path
    on GPUs.
    """
    B, T, H, D = q.shape
    KV = k.shape[2]
    if H % KV:
        raise ValueError(f"query heads ({H}) must be a multiple of KV heads ({KV})")
    scale, valid, mem_len = blocked.checked_arguments(q, valid, mem_k, mem_len, mem_layer, scale)
    blocks = (int(block_q), int(block_k), int(block_mem))

    def call(*arrays):
        return _attention(*arrays, bool(causal), scale, blocks, interpret)

    return _per_shard(call, q, k, v, valid, mem_k, mem_v, mem_len, mem_layer)


def _per_shard(call, q, k, v, valid, mem_k, mem_v, mem_len, layer):
    """``call`` on each shard under :class:`vxl_jax.runtime.sharding.activation_sharding` (XLA cannot partition
    a Mosaic call: it would gather every operand onto every chip). Batch rows and KV heads (with
    their query heads) are split as the rules split ``batch`` and ``act_kv_heads``; other dims whole."""
    args = (q, k, v, valid, mem_k, mem_v, mem_len, layer)
    active = sh.active_sharding()
    if active is None:
        return call(*args)
    mesh, rules = active
    spec = tuple(sh.logical_to_spec(("batch", "act_kv_heads"), (q.shape[0], k.shape[2]), rules, mesh))
    batch, heads = (spec + (None, None))[:2]
    if batch is None and heads is None:
        return call(*args)
    P = jax.sharding.PartitionSpec
    rows = P(batch, None, heads, None)
    mem = P(batch, None, heads, None) if mem_k is None or mem_k.ndim == 4 else P(None, batch, None, heads, None)
    specs = (rows, rows, rows, P(batch, None), mem, mem, P(batch), P())
    present = [i for i, a in enumerate(args) if a is not None]

    def local(*xs):
        full = [None] * len(args)
        for i, x in zip(present, xs):
            full[i] = x
        return call(*full)

    return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs[i] for i in present), out_specs=rows,
                         check_vma=False)(*(args[i] for i in present))


def tpu_supported(head_dim: int, kv_heads: int, *kv_dtypes) -> bool:
    """Whether Mosaic can run the kernel: lane-aligned heads (Dh a multiple of 128) and per-head rows
    it can load (32-bit keys, or 16-bit ones with one or an even number of KV heads)."""
    def loadable(dtype):
        bits = jnp.dtype(dtype).itemsize * 8
        return bits == 32 or (bits == 16 and (kv_heads == 1 or kv_heads % 2 == 0))

    return head_dim % 128 == 0 and all(loadable(d) for d in kv_dtypes)
