"""Length-aware blocked attention (the default ``xla`` backend) equals the dense reference:
random memory lengths, partial (padded) chunks, empty memory, decoding rows, non-causal; values
and gradients; and its cost follows the filled memory (the loop never reads empty capacity)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vxl_jax.model import attention, blocked



@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    # Small tiles so that a few hundred rows exercise many tiles, padded query and key tiles, the
    # clamped last memory tile and causal tile skipping.
    monkeypatch.setattr(blocked, "Q_BLOCK", 32)
    monkeypatch.setattr(blocked, "K_BLOCK", 48)
    monkeypatch.setattr(blocked, "M_BLOCK", 40)


def _inputs(seed, B=2, T=150, H=4, KV=2, D=8, M=300, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    arr = lambda *s: jnp.asarray(rng.normal(size=s), dtype)  # noqa: E731
    return arr(B, T, H, D), arr(B, T, KV, D), arr(B, T, KV, D), arr(B, M, KV, D), arr(B, M, KV, D)


def _both(q, k, v, mk, mv, valid, mem_len, causal=True):
    kw = dict(valid=valid, causal=causal, mem_k=mk, mem_v=mv, mem_len=mem_len)
    return attention.attend(q, k, v, backend="reference", **kw), attention.attend(q, k, v, backend="xla", **kw)


@pytest.mark.parametrize("mem_len,n_valid", [
    ((0, 217), (150, 101)),  # empty memory in one row; a padded chunk in the other
    ((300, 64), (1, 150)),  # full buffer; exactly one block; a one-row chunk
    ((5, 129), (150, 150)),  # lengths off block boundaries
])
def test_values_and_gradients_equal_reference(mem_len, n_valid):
    q, k, v, mk, mv = _inputs(0)
    T = q.shape[1]
    mem_len = jnp.asarray(mem_len, jnp.int32)
    valid = jnp.arange(T)[None] < jnp.asarray(n_valid)[:, None]
    ref, got = _both(q, k, v, mk, mv, valid, mem_len)
    rows = np.asarray(valid)  # padded rows are never read downstream
    np.testing.assert_allclose(np.asarray(got)[rows], np.asarray(ref)[rows], atol=1e-5, rtol=0)

    w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32) * valid[..., None, None]

    def grads(backend):
        f = lambda *x: jnp.sum(attention.attend(*x[:3], valid=valid, mem_k=x[3], mem_v=x[4], mem_len=mem_len,  # noqa: E731
                                                backend=backend) * w)
        return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3, 4)))(q, k, v, mk, mv)

    for name, a, b in zip("q k v mem_k mem_v".split(), grads("reference"), grads("xla")):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0, err_msg=name)


def test_non_causal_without_memory_equals_reference():
    q, k, v, _, _ = _inputs(2)
    ref = attention.attend(q, k, v, causal=False, backend="reference")
    got = attention.attend(q, k, v, causal=False, backend="xla")
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=0)


def test_decode_row_reads_only_filled_memory():
    """One new token over a memory whose empty slots hold garbage (NaN): nothing past mem_len is read."""
    q, k, v, mk, mv = _inputs(3, T=1)
    mem_len = jnp.asarray([37, 300], jnp.int32)
    slot = jnp.arange(mk.shape[1])[None, :, None, None]
    poison = lambda m: jnp.where(slot < mem_len[:, None, None, None], m, jnp.nan)  # noqa: E731
    ref, _ = _both(q, k, v, mk, mv, None, mem_len)
    got = attention.attend(q, k, v, mem_k=poison(mk), mem_v=poison(mv), mem_len=mem_len, backend="xla")
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=0)


def test_memory_loop_trip_count_follows_length():
    """The memory loop runs ceil(max(mem_len) / K_BLOCK) steps, whatever the capacity."""
    assert int(blocked._trip_count(jnp.asarray([0, 0]), 64)) == 0
    assert int(blocked._trip_count(jnp.asarray([65, 3]), 64)) == 2
    assert int(blocked._trip_count(jnp.asarray([128]), 64)) == 2


def test_memory_cut_into_equal_tiles():
    """The capacity is cut into equal tiles of at most the tile size (rounded up to 8 slots): a memory filled
    close to its capacity reads little past it, and a larger capacity never makes the tiles larger."""
    for T, M in [(1, 2990), (1, 4096), (1, 300), (32, 300), (150, 41), (150, 40), (7, 10_000), (1, 5)]:
        tl = blocked._Tiling(T, M)
        most = min(M, max(blocked.M_BLOCK, min(blocked.M_BLOCK_MAX, blocked.M_BLOCK * (blocked.Q_BLOCK // tl.qb))))
        n = -(-M // tl.mb)
        assert tl.mb <= most and n == -(-M // most), (T, M, tl.mb)  # as few tiles as the size allows
        assert tl.mb == M or tl.mb % 8 == 0, (T, M, tl.mb)
        assert n * tl.mb - M < 8 * n, (T, M, tl.mb)  # the last tile shifted back by under 8 slots per tile
    assert blocked._Tiling(1, 4 * 2990).mb == blocked._Tiling(1, 2990).mb == 1000  # 4x the room: same tiles


def test_causal_tiles_skip_the_upper_triangle():
    tl = blocked._Tiling(150, 300)  # query tiles of 32 rows, chunk key tiles of 48, memory tiles of <= 40:
    assert (tl.nq, tl.nk, tl.mb) == (5, 4, 40)  # 300 slots in 8 tiles of 38 rounded up to 40 (the last one clamped)
    # key tiles read by each query tile: rows 0-31 need keys 0-47 (1 tile), rows 128-159 all 4
    assert [int(tl.chunk_tiles(i, True)) for i in range(tl.nq)] == [1, 2, 2, 3, 4]
    assert all(int(tl.chunk_tiles(i, False)) == 4 for i in range(tl.nq))


def test_bf16_close_to_reference():
    q, k, v, mk, mv = _inputs(4, dtype=jnp.bfloat16)
    mem_len = jnp.asarray([100, 250], jnp.int32)
    ref, got = _both(q, k, v, mk, mv, None, mem_len)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32), atol=3e-2, rtol=0)


def test_stacked_memory_read_in_place_equals_a_slice():
    """Inference reads layer l's blocks straight from the stacked [L, B, M, KV, D] buffer."""
    q, k, v, mk, mv = _inputs(5)
    stack_k = jnp.stack([mk * 0.5, mk, -mk])
    stack_v = jnp.stack([mv, mv * 2.0, mv + 1.0])
    mem_len = jnp.asarray([70, 300], jnp.int32)
    for layer in range(3):
        ref = attention.attend(q, k, v, mem_k=stack_k[layer], mem_v=stack_v[layer], mem_len=mem_len)
        got = jax.jit(lambda i: attention.attend(q, k, v, mem_k=stack_k, mem_v=stack_v, mem_len=mem_len,
                                                 mem_layer=i))(jnp.int32(layer))
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-6, rtol=0)
    g = jax.grad(lambda s: jnp.sum(attention.attend(q, k, v, mem_k=s, mem_v=stack_v, mem_len=mem_len,
                                                    mem_layer=jnp.int32(1))))(stack_k)
    g_ref = jax.grad(lambda m: jnp.sum(attention.attend(q, k, v, mem_k=m, mem_v=stack_v[1], mem_len=mem_len)))(mk)
    np.testing.assert_allclose(np.asarray(g[1]), np.asarray(g_ref), atol=1e-6)
    assert not np.asarray(g[0]).any() and not np.asarray(g[2]).any()
