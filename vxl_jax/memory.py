"""Explicit KV memory: the runtime state of a Video-XL prompt, as a pytree.

Layout per layer: slots ``[0, length)`` hold ``[prefix (sink) || beacons of every window || text]``
(docs/algorithm.md §6). Keys are stored rotated with their slot index, which equals the RoPE position the
original re-applies at every step (compact positions, docs/algorithm.md §5), so nothing is ever re-rotated.
Capacity is static (preallocated); ``length`` counts the valid slots.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vxl_jax.model.rope import rope_tables, rotate


@flax.struct.dataclass
class KVMemory:
    k: jax.Array  # [L, B, M, KV, Dh] keys, rotated with their slot index
    v: jax.Array  # [L, B, M, KV, Dh]
    length: jax.Array  # [B] int32, valid slots
    n_prefix: jax.Array  # [B] int32, of which prefix (sink) tokens
    n_beacons: jax.Array  # [B] int32, of which beacons
    n_text: jax.Array  # [B] int32, of which uncompressed text after the video (incl. generated)

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @staticmethod
    def empty(num_layers: int, batch: int, capacity: int, kv_heads: int, head_dim: int, dtype) -> "KVMemory":
        shape = (num_layers, batch, capacity, kv_heads, head_dim)
        zi = lambda: jnp.zeros((batch,), jnp.int32)  # noqa: E731
        # every field gets a buffer of its own: steps donate the memory
        return KVMemory(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), zi(), zi(), zi(), zi())

    def sizes(self) -> dict:
        return {"prefix": self.n_prefix, "beacons": self.n_beacons, "text": self.n_text, "total": self.length}

    def host_sizes(self, index: int = 0) -> dict:
        """Python ints of :meth:`sizes` for batch row ``index``."""
        return {k: int(np.asarray(v)[index]) for k, v in self.sizes().items()}


def rotate_at(k, slots, head_dim: int, theta: float):
    """k [L, B, T, KV, Dh] pre-RoPE -> rotated with positions ``slots`` [B, T]."""
    cos, sin = rope_tables(slots, head_dim, theta)
    return rotate(k, cos[None, :, :, None, :], sin[None, :, :, None, :])


def append(mem: KVMemory, k_pre, v, count, *, theta: float, kind: str) -> KVMemory:
    """Write the first ``count[b]`` rows of k_pre/v [L, B, T, KV, Dh] at slots ``length[b]...``.

    Keys are rotated with their slot index. Rows past ``count`` (padding) are dropped, never
    written, so a partial window or a padded prompt leaves no trace. ``kind`` in
    {"prefix", "beacons", "text"} updates the matching size counter.
    """
    L, B, T = k_pre.shape[:3]
    t = jnp.arange(T, dtype=jnp.int32)[None, :]
    slots = mem.length[:, None] + t  # [B, T]
    k_rot = rotate_at(k_pre, slots, k_pre.shape[-1], theta).astype(mem.k.dtype)
    target = jnp.where(t < count[:, None], slots, mem.capacity)  # out of range -> dropped
    b_idx = jnp.broadcast_to(jnp.arange(B)[:, None], (B, T))
    new_k = mem.k.at[:, b_idx, target].set(k_rot, mode="drop")
    new_v = mem.v.at[:, b_idx, target].set(v.astype(mem.v.dtype), mode="drop")
    count = count.astype(jnp.int32)
    upd = {"n_prefix": mem.n_prefix, "n_beacons": mem.n_beacons, "n_text": mem.n_text}
    field = {"prefix": "n_prefix", "beacons": "n_beacons", "text": "n_text"}[kind]
    upd[field] = upd[field] + count
    return mem.replace(k=new_k, v=new_v, length=mem.length + count, **upd)
