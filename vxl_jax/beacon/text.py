"""The text step over the KV memory, shared by inference (prompt text, suffix, decoding) and training (prefix
and suffix of the windowed loss): text rows after everything in the memory, causal among themselves, with
full view of the memory and positions continuing from its length (docs/algorithm.md §5, §6)."""

from __future__ import annotations

import jax.numpy as jnp

from vxl_jax.beacon.memory import KVMemory, append


def text_step(model, mem: KVMemory, x, n, *, kind: str | None, sliced_memory: bool = False):
    """Embedded text x [B, T, D] (the first n[b] rows valid) after the memory -> (hidden [B, T, D], memory).

    With ``kind`` ("prefix" | "text") the valid rows' K/V are appended to the memory under that counter;
    ``kind=None`` leaves the memory as it was (a scored suffix in training). Attention backend and remat
    policy come from ``model.cfg.runtime``; ``sliced_memory``: see :meth:`vxl_jax.model.qwen2.Qwen2LM.__call__`
    (True under autodiff).
    """
    rt = model.cfg.runtime
    t = jnp.arange(x.shape[1], dtype=jnp.int32)[None]
    hidden, k, v = model.lm(x, positions=mem.length[:, None] + t, valid=t < n[:, None], mem_k=mem.k, mem_v=mem.v,
                            mem_len=mem.length, attention=rt.attention, remat=rt.remat, sliced_memory=sliced_memory)
    if kind is not None:
        mem = append(mem, k, v, n, theta=model.cfg.lm.rope_theta, kind=kind)
    return hidden, mem
