"""``memory.append``: rows written at each sample's length, padding and overflow dropped; its derivative."""

import jax
import jax.numpy as jnp
import numpy as np

from vxl_jax.beacon.memory import KVMemory, append, rotate_at


def _reference(buf, rows, length, count):
    out = np.array(buf)
    for b in range(buf.shape[1]):
        for t in range(int(count[b])):
            if length[b] + t < buf.shape[2]:
                out[:, b, length[b] + t] = rows[:, b, t]
    return out


def test_append_writes_valid_rows_only():
    L, B, M, T, KV, Dh = 2, 3, 10, 4, 2, 4
    rng = np.random.default_rng(0)
    mem = KVMemory.empty(L, B, M, KV, Dh, jnp.float32)
    base = rng.normal(size=mem.k.shape).astype(np.float32)
    length = np.array([0, 5, 8], np.int32)  # the last sample overflows the capacity
    mem = mem.replace(k=jnp.asarray(base), v=jnp.asarray(-base), length=jnp.asarray(length))
    k, v = rng.normal(size=(2, L, B, T, KV, Dh)).astype(np.float32)
    count = np.array([4, 2, 4], np.int32)
    out = jax.jit(lambda m, k, v, c: append(m, k, v, c, theta=1e4, kind="beacons"))(mem, k, v, jnp.asarray(count))
    slots = jnp.asarray(length)[:, None] + jnp.arange(T)[None]
    k_rot = np.asarray(rotate_at(jnp.asarray(k), slots, Dh, 1e4))
    np.testing.assert_allclose(np.asarray(out.k), _reference(base, k_rot, length, count), rtol=0, atol=1e-6)  # jit rounding
    np.testing.assert_array_equal(np.asarray(out.v), _reference(-base, v, length, count))
    np.testing.assert_array_equal(np.asarray(out.length), length + count)
    np.testing.assert_array_equal(np.asarray(out.n_beacons), count)


def test_append_gradient():
    """d buf: zero at the written slots, passed through elsewhere; d rows: the written slots' cotangent,
    0 for padding rows and rows past the capacity."""
    L, B, M, T, KV, Dh = 1, 2, 6, 3, 1, 2
    rng = np.random.default_rng(1)
    length, count = jnp.array([1, 4], jnp.int32), jnp.array([2, 3], jnp.int32)
    buf = jnp.asarray(rng.normal(size=(L, B, M, KV, Dh)).astype(np.float32))
    rows = jnp.asarray(rng.normal(size=(L, B, T, KV, Dh)).astype(np.float32))
    g = jnp.asarray(rng.normal(size=buf.shape).astype(np.float32))
    zi = jnp.zeros(B, jnp.int32)

    def f(buf, rows):
        mem = KVMemory(jnp.zeros_like(buf), buf, length, zi, zi, zi)
        return jnp.sum(append(mem, jnp.zeros_like(rows), rows, count, theta=1e4, kind="text").v * g)

    d_buf, d_rows = jax.jit(jax.grad(f, argnums=(0, 1)))(buf, rows)
    want_buf, want_rows = np.asarray(g).copy(), np.zeros(rows.shape, np.float32)
    for b in range(B):
        for t in range(int(count[b])):
            s = int(length[b]) + t
            if s < M:
                want_buf[:, b, s] = 0
                want_rows[:, b, t] = np.asarray(g)[:, b, s]
    np.testing.assert_array_equal(np.asarray(d_buf), want_buf)
    np.testing.assert_array_equal(np.asarray(d_rows), want_rows)
