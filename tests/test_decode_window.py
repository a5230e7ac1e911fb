"""The decoding window (what the compiled decode loop reads and writes) against the text step over the whole
memory: logits and written K/V per token, rows of different lengths, a row that is not fed, garbage in the
unfilled slots, a row at the capacity; and the window sizes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vxl_jax.infer.decode_window import WINDOW_STEP, cut, paste, window_size, window_step
from vxl_jax.infer.engine import _text_chunk, decodes_in_window
from vxl_jax.beacon.memory import KVMemory
from vxl_jax.model import random_model


@pytest.fixture(scope="module")
def split(tiny_cfg):
    return nnx.split(random_model(tiny_cfg, seed=5, std=0.2))


@pytest.fixture(scope="module")
def reference_split(tiny_cfg):
    """The same model with the ``reference`` attention backend (dense, exact softmax)."""
    cfg = tiny_cfg.replace(runtime=dataclasses.replace(tiny_cfg.runtime, attention="reference"))
    return nnx.split(random_model(cfg, seed=5, std=0.2))


def _memory(cfg, lengths, capacity, seed=0, unfilled=jnp.nan):
    """A memory with random K/V in its filled slots and ``unfilled`` in every other one."""
    lm = cfg.lm
    mem = KVMemory.empty(lm.num_layers, len(lengths), capacity, lm.num_kv_heads, lm.head_dim, jnp.float32)
    rng = np.random.default_rng(seed)
    length = jnp.asarray(lengths, jnp.int32)
    filled = (jnp.arange(capacity)[None, :] < length[:, None])[None, :, :, None, None]
    noise = lambda: jnp.asarray(rng.normal(size=mem.k.shape), jnp.float32)  # noqa: E731
    return mem.replace(k=jnp.where(filled, noise(), unfilled), v=jnp.where(filled, noise(), unfilled), length=length,
                       n_beacons=length)


@pytest.mark.parametrize("lengths,capacity", [((37, 250, 0), 300), ((299, 12, 100), 300)])
def test_tokens_equal_the_text_step(tiny_cfg, split, reference_split, lengths, capacity):
    """Four tokens per row through the window, then written back, equal the same tokens fed one by one through
    the text step over the memory (the dense ``reference`` backend, given zeros where the window's memory
    holds NaN): logits, K/V of every filled slot, sizes. Row 2 is not fed at step 1 (it writes nothing
    then); a row at the capacity drops its token as the memory does."""
    graphdef, state = split
    mem = _memory(tiny_cfg, lengths, capacity)
    B = len(lengths)
    ids = np.random.default_rng(1).integers(3, tiny_cfg.lm.vocab_size, (4, B, 1)).astype(np.int32)
    fed = np.ones((4, B), np.int32)
    fed[1, 2] = 0
    S = window_size(max(lengths), 4, capacity)

    win_step = jax.jit(lambda st, w, i, n: window_step(nnx.merge(graphdef, st), w, i, n))
    ref_graphdef, ref_state = reference_split
    text = jax.jit(lambda st, m, i, n: _text_chunk(ref_graphdef, st, m, i, n, kind="text"))
    win, ref = jax.jit(cut, static_argnums=1)(mem, S), _memory(tiny_cfg, lengths, capacity, unfilled=0.0)
    for t in range(4):
        got_logits, win = win_step(state, win, jnp.asarray(ids[t]), jnp.asarray(fed[t]))
        ref_logits, ref = text(ref_state, ref, jnp.asarray(ids[t]), jnp.asarray(fed[t]))
        rows = fed[t] > 0
        np.testing.assert_allclose(np.asarray(got_logits)[rows], np.asarray(ref_logits)[rows], atol=1e-5, rtol=0)
    out = jax.jit(paste, static_argnums=2)(mem, win, 4)
    np.testing.assert_array_equal(np.asarray(out.length), np.asarray(ref.length))
    np.testing.assert_array_equal(np.asarray(out.n_text), fed.sum(0))
    np.testing.assert_array_equal(np.asarray(out.n_beacons), np.asarray(lengths))
    for b in range(B):
        n = min(int(ref.length[b]), capacity)
        for name in ("k", "v"):
            np.testing.assert_allclose(np.asarray(getattr(out, name))[:, b, :n],
                                       np.asarray(getattr(ref, name))[:, b, :n], atol=1e-5, rtol=0, err_msg=name)


def test_unfilled_slots_never_leak(tiny_cfg, split):
    """The window zeroes what the memory holds past ``length`` (here NaN), so logits stay finite."""
    graphdef, state = split
    mem = _memory(tiny_cfg, (5, 64), 512)
    win = cut(mem, window_size(64, 8, 512))
    assert all(np.isfinite(np.asarray(w)).all() for w in win.k + win.v)
    logits, _ = window_step(nnx.merge(graphdef, state), win, jnp.ones((2, 1), jnp.int32), jnp.ones((2,), jnp.int32))
    assert np.isfinite(np.asarray(logits)).all()


def test_window_size_follows_the_length_not_the_capacity():
    assert window_size(194, 16, 10_000) == WINDOW_STEP
    assert window_size(2894, 16, 10_000) == window_size(2894, 16, 4 * 10_000) == 12 * WINDOW_STEP
    assert window_size(2894, 16, 2990) == 2990  # never past the capacity
    assert window_size(WINDOW_STEP - 16, 16, 10_000) == WINDOW_STEP  # exactly full: no extra step


def test_window_only_where_memory_slices_are_copied():
    """The window is XLA:CPU's path; TPUs read the memory in place, and ``reference`` stays the plain path."""
    assert decodes_in_window("cpu", "xla") and decodes_in_window("cpu", "pallas")
    assert not decodes_in_window("cpu", "reference")
    assert not decodes_in_window("tpu", "xla") and not decodes_in_window("tpu", "pallas")
    assert not decodes_in_window("gpu", "xla")
