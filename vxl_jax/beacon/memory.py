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


def write_rows(buf, rows, slots):
    """buf [L, B, M, ...] with rows [L, B, T, ...] written at ``slots`` [B, T] (distinct within a row;
    slots >= M are dropped). One scatter whose batch dim is an operand-batching dim (each sample writes
    its own row, so the batch can stay sharded) with unique indices (so its derivative is a plain
    scatter / gather: no index bookkeeping buffers of the memory's size)."""
    trailing = tuple(range(3, buf.ndim))
    dnums = jax.lax.ScatterDimensionNumbers(update_window_dims=(0,) + trailing, inserted_window_dims=(2,),
                                            scatter_dims_to_operand_dims=(2,), operand_batching_dims=(1,),
                                            scatter_indices_batching_dims=(0,))
    return jax.lax.scatter(buf, slots[..., None], rows.astype(buf.dtype), dnums, indices_are_sorted=False,
                           unique_indices=True, mode=jax.lax.GatherScatterMode.FILL_OR_DROP)


def append(mem: KVMemory, k_pre, v, count, *, theta: float, kind: str) -> KVMemory:
    """Write the first ``count[b]`` rows of k_pre/v [L, B, T, KV, Dh] at slots ``length[b]...``.

    Keys are rotated with their slot index. Rows past ``count`` (padding) are dropped, never
    written, so a partial window or a padded prompt leaves no trace; so are rows past the
    capacity. ``kind`` in {"prefix", "beacons", "text"} updates the matching size counter.
    """
    T = k_pre.shape[2]
    t = jnp.arange(T, dtype=jnp.int32)[None, :]
    slots = mem.length[:, None] + t  # [B, T]
    k_rot = rotate_at(k_pre, slots, k_pre.shape[-1], theta)
    # padding rows go to distinct slots past the end (dropped), so every index stays unique
    target = jnp.where(t < count[:, None], slots, slots + mem.capacity)
    new_k = write_rows(mem.k, k_rot, target)
    new_v = write_rows(mem.v, v, target)
    count = count.astype(jnp.int32)
    upd = {"n_prefix": mem.n_prefix, "n_beacons": mem.n_beacons, "n_text": mem.n_text}
    field = {"prefix": "n_prefix", "beacons": "n_beacons", "text": "n_text"}[kind]
    upd[field] = upd[field] + count
    return mem.replace(k=new_k, v=new_v, length=mem.length + count, **upd)


# ---------------------------------------------------------------------------- whole-memory operations (host side)


def bucket(n: int, step: int) -> int:
    """The size bucket of ``n``: the smallest positive multiple of ``step`` that holds it (limits recompiles)."""
    return max(step, -(-int(n) // step) * step)


def grow(mem: KVMemory, slots: int) -> KVMemory:
    """``mem`` with a slot axis of exactly ``slots`` if it has fewer (zero slots at the end), else ``mem``."""
    extra = slots - mem.capacity
    if extra <= 0:
        return mem
    pad = [(0, 0), (0, 0), (0, extra), (0, 0), (0, 0)]
    return mem.replace(k=jnp.pad(mem.k, pad), v=jnp.pad(mem.v, pad))


def take_rows(mem: KVMemory, rows, capacity: int | None = None) -> KVMemory:
    """A new memory of the batch rows ``rows`` (B ints, repeats allowed) of ``mem``, cut or grown to
    ``capacity`` slots (default: as ``mem``). Always fresh buffers: it may be donated."""
    idx = jnp.asarray(rows, jnp.int32)
    cap = mem.capacity if capacity is None else capacity
    out = KVMemory(mem.k[:, idx, :cap], mem.v[:, idx, :cap], mem.length[idx], mem.n_prefix[idx],
                   mem.n_beacons[idx], mem.n_text[idx])
    return grow(out, cap)


def concat_rows(mems: list[KVMemory], capacity: int) -> KVMemory:
    """Memories (batch b_i each, any capacities holding their filled slots) -> one memory of batch sum(b_i) and
    ``capacity`` slots."""
    mems = [grow(m, capacity) for m in mems]
    mems = [m.replace(k=m.k[:, :, :capacity], v=m.v[:, :, :capacity]) for m in mems]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1 if xs[0].ndim == 5 else 0), *mems)


def drop_text(mem: KVMemory, n) -> KVMemory:
    """The memory read up to before its last ``n`` text slots (int, or [B]): the memory is append-only, so this
    view shares the K/V buffers (the video memory of a prefill, without a copy)."""
    return mem.replace(length=mem.length - n, n_text=mem.n_text - n)
