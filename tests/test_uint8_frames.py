"""uint8 frames to the device: ``VideoXL.prefill`` on raw uint8 frames (resized on the host per scan call,
normalized on the device) equals the prefill on host-preprocessed float32 frames; the engine sees uint8."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vxl_jax.media.preprocess import preprocess_frames, resize_crop_frames


@pytest.fixture(scope="module")
def video():
    """23 raw frames (3 windows of 10 at the tiny config: scan calls of 2 + 1 windows, the last one padded)."""
    rng = np.random.default_rng(4)
    ids = np.concatenate([rng.integers(3, 500, 5), [-200], rng.integers(3, 500, 6)])
    return ids, rng.integers(0, 256, (23, 120, 200, 3), dtype=np.uint8)


def test_encode_frames_uint8_equals_float(vx):
    rng = np.random.default_rng(5)
    u8 = resize_crop_frames(rng.integers(0, 256, (2, 90, 60, 3), dtype=np.uint8))
    enc = jax.jit(lambda m, p: m.encode_frames(p))
    a = np.asarray(enc(vx.model, jnp.asarray(u8)))
    b = np.asarray(enc(vx.model, jnp.asarray(preprocess_frames(u8))))
    assert a.shape == (2, 144, vx.cfg.lm.hidden_size)
    np.testing.assert_array_equal(a, b)


def test_prefill_uint8_equals_float(vx, video, monkeypatch):
    ids, frames = video
    seen = []
    windows = vx.engine.windows

    def spy(mem, inputs, *args, **kwargs):
        seen.append((inputs.dtype, inputs.shape))
        return windows(mem, inputs, *args, **kwargs)

    monkeypatch.setattr(vx.engine, "windows", spy)
    raw = vx.prefill(ids, frames, ratio=4)
    assert seen == [(jnp.uint8, (2, 1, 10, 336, 336, 3)), (jnp.uint8, (1, 1, 10, 336, 336, 3))]
    ref = vx.prefill(ids, preprocess_frames(frames), ratio=4)
    assert seen[2][0] == jnp.float32 and seen[2][1][3:] == (3, 336, 336)
    np.testing.assert_allclose(raw.logits, ref.logits, rtol=0, atol=1e-6)
    for x, y in ((raw.memory.k, ref.memory.k), (raw.memory.v, ref.memory.v)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)
    assert raw.video_memory.frames == 23 and raw.ratios == ref.ratios
    # frames already resized + cropped (what infer.py sends) are taken as they are
    sq = vx.prefill(ids, resize_crop_frames(frames), ratio=4)
    np.testing.assert_array_equal(sq.logits, raw.logits)


def test_prefill_bad_uint8_input(vx, video):
    ids, _ = video
    with pytest.raises(ValueError, match="no frames"):
        vx.prefill(ids, np.zeros((0, 40, 60, 3), np.uint8))
    with pytest.raises(ValueError, match="pixel_values must be"):
        vx.prefill(ids, np.zeros((2, 3, 40, 60), np.uint8))
