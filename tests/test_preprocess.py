"""CLIP preprocessing equals transformers' CLIPImageProcessor (openai/clip-vit-large-patch14-336 settings)."""

import numpy as np
import pytest

from vxl_jax.media.preprocess import (CLIP_MEAN, CLIP_STD, normalize_frames, preprocess_frames, resize_crop_frames,
                                resize_shortest_edge)

SETTINGS = dict(
    do_resize=True, size={"shortest_edge": 336}, resample=3,  # PIL bicubic
    do_center_crop=True, crop_size={"height": 336, "width": 336},
    do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
    image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True,
)


@pytest.fixture(scope="module")
def hf_processor():
    import warnings

    import transformers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = transformers.CLIPImageProcessor(**SETTINGS)
    if getattr(proc, "backend", "pil") != "pil":
        # With torchvision installed transformers picks its tensor backend; the original Video-XL (transformers
        # 4.x, uint8 frames) resized with PIL, which is what we reproduce.
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        proc = CLIPImageProcessorPil(**SETTINGS)
    return proc


def _reference(proc, frames):
    out = proc(images=list(frames), return_tensors="np", input_data_format="channels_last")["pixel_values"]
    return np.asarray(out)


@pytest.mark.parametrize("hw", [(240, 320), (320, 240), (50, 37), (336, 336), (336, 500), (401, 336),
                                (720, 1280), (3, 7)], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_matches_clip_image_processor(hf_processor, hw):
    rng = np.random.default_rng(hw[0] * 1000 + hw[1])
    frames = rng.integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    ours = preprocess_frames(frames)
    ref = _reference(hf_processor, frames)
    assert ours.dtype == np.float32 and ours.shape == (3, 3, 336, 336) == ref.shape
    # bit-exact: same PIL resize, same float64 rescale then float32 normalize
    assert np.abs(ours - ref).max() == 0.0


def test_matches_on_decoded_video_frames(hf_processor, tmp_path):
    from vxl_jax.media.video import load_video, write_sample_video

    path = write_sample_video(tmp_path / "s.mp4", num_frames=10, size=(320, 240))
    frames, _ = load_video(path, 4)
    ref = _reference(hf_processor, frames)
    np.testing.assert_array_equal(preprocess_frames(frames), ref)
    # a 4-D uint8 batch given directly to the processor is treated as a list of frames (spec section 5)
    batch = np.asarray(hf_processor(images=frames, return_tensors="np")["pixel_values"])
    np.testing.assert_array_equal(preprocess_frames(frames), batch)


def test_constant_frame_is_the_normalized_colour():
    frame = np.empty((90, 200, 3), np.uint8)
    frame[...] = (10, 128, 250)
    out = preprocess_frames(frame)
    assert out.shape == (1, 3, 336, 336)
    for c, v in enumerate((10, 128, 250)):
        expected = (np.float32(v / 255) - np.float32(CLIP_MEAN[c])) / np.float32(CLIP_STD[c])
        np.testing.assert_allclose(out[0, c], expected, rtol=0, atol=2e-6)


def test_resize_long_edge_is_truncated():
    img = np.zeros((250, 333, 3), np.uint8)  # 336 * 333 / 250 = 447.55 -> 447 (int, not round)
    assert resize_shortest_edge(img, 336).shape == (336, 447, 3)
    assert resize_shortest_edge(img.transpose(1, 0, 2), 336).shape == (447, 336, 3)


def test_center_crop_takes_the_middle():
    # a frame whose left and right thirds differ: after resizing to 336x672, the crop is the middle band
    frame = np.zeros((336, 672, 3), np.uint8)
    frame[:, 168:504] = 255
    out = preprocess_frames(frame)
    white = (1 - np.float32(CLIP_MEAN[0])) / np.float32(CLIP_STD[0])
    np.testing.assert_allclose(out[0, 0], white, atol=1e-6)


def test_grayscale_and_single_frame():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (2, 40, 60, 1), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess_frames(gray), preprocess_frames(np.repeat(gray, 3, -1)))
    one = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess_frames(one), preprocess_frames(one[None]))


def test_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(np.zeros((2, 40, 60, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        preprocess_frames(np.zeros((2, 3, 40, 60), np.uint8))
    with pytest.raises(ValueError, match="0"):
        preprocess_frames(np.zeros((0, 40, 60, 3), np.uint8))


def test_threads_do_not_change_the_result():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (7, 50, 90, 3), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess_frames(frames, threads=1), preprocess_frames(frames, threads=3))


# ---------------------------------------------------------------- uint8 to the device, normalization there

@pytest.mark.parametrize("hw", [(240, 320), (336, 336), (401, 336), (3, 7)], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_device_normalization_matches_clip_image_processor(hf_processor, hw):
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(hw[0] * 7 + hw[1])
    frames = rng.integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    u8 = resize_crop_frames(frames)
    assert u8.dtype == np.uint8 and u8.shape == (3, 336, 336, 3)
    ours = np.asarray(jax.jit(normalize_frames)(jnp.asarray(u8)))
    assert ours.dtype == np.float32 and ours.shape == (3, 3, 336, 336)
    np.testing.assert_array_equal(ours, _reference(hf_processor, frames))  # bit-exact in fp32
    np.testing.assert_array_equal(ours, preprocess_frames(frames))


def test_device_normalization_every_level_and_dtype():
    import jax.numpy as jnp

    levels = np.arange(256, dtype=np.uint8)
    frame = np.stack([levels, levels[::-1], np.roll(levels, 77)], -1).reshape(16, 16, 3)  # every level, every channel
    ref = preprocess_frames(frame, size=16)
    np.testing.assert_array_equal(np.asarray(normalize_frames(frame[None])), ref)
    bf16 = normalize_frames(jnp.asarray(frame[None]), jnp.bfloat16)
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(bf16), np.asarray(jnp.asarray(ref, jnp.bfloat16)))
    with pytest.raises(ValueError, match="uint8"):
        normalize_frames(ref)


def test_resize_crop_is_idempotent_and_keeps_uint8():
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (2, 50, 90, 3), dtype=np.uint8)
    once = resize_crop_frames(frames, 40)
    assert once.dtype == np.uint8 and once.shape == (2, 40, 40, 3)
    assert resize_crop_frames(once, 40) is once  # already square at the size: no copy, no resampling
    np.testing.assert_array_equal(resize_crop_frames(frames, 40, threads=1), once)
