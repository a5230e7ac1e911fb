"""Incremental ingestion (vxl_jax/infer/session.py): frames added in any chunking give the memory and logits of one
prefill; asking does not change the session; step-random ratios follow the windows, not the chunks; a saved
session continues exactly; golden cases through a session."""

import numpy as np
import pytest

from vxl_jax.config import ConfigError

FRAMES = 23  # 2 complete windows of 10 frames + 3 pending


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(3)
    prefix, suffix = rng.integers(3, 500, 6), rng.integers(3, 500, 5)
    frames = rng.integers(0, 256, (FRAMES, 40, 52, 3), dtype=np.uint8)  # raw frames: resized per window
    return prefix, suffix, frames


def _ids(prefix, suffix):
    return np.concatenate([prefix, [-200], suffix])


def _session(vx, prefix, frames, chunk, ratio=8):
    s = vx.session(prefix, ratio=ratio)
    for i in range(0, len(frames), chunk):
        s.add_frames(frames[i:i + chunk])
    return s


def _assert_same_memory(a, b, atol=1e-5):
    assert a.host_sizes() == b.host_sizes()
    n = a.host_sizes()["total"]
    np.testing.assert_allclose(np.asarray(a.k)[:, :, :n], np.asarray(b.k)[:, :, :n], atol=atol, rtol=0)
    np.testing.assert_allclose(np.asarray(a.v)[:, :, :n], np.asarray(b.v)[:, :, :n], atol=atol, rtol=0)


@pytest.mark.parametrize("chunk", [1, 7, FRAMES])
def test_chunking_does_not_change_the_numbers(vx, video, chunk):
    prefix, suffix, frames = video
    ref = vx.prefill(_ids(prefix, suffix), frames, ratio=8)
    s = _session(vx, prefix, frames, chunk)
    assert (s.state.windows, s.state.pending_frames, s.frames) == (2, 3, FRAMES)
    res = s.prefill(suffix)
    np.testing.assert_allclose(res.logits, ref.logits, atol=1e-5, rtol=0)
    _assert_same_memory(res.memory, ref.memory)
    _assert_same_memory(res.video_memory.kv, ref.video_memory.kv)
    assert res.ratios == ref.ratios == (8, 8, 8)


def test_asking_keeps_the_pending_window_for_later_frames(vx, video):
    prefix, suffix, frames = video
    s = vx.session(prefix, ratio=4)
    s.add_frames(frames[:13])
    before = s.sizes
    first = s.prefill(suffix)  # 1 complete window + 3 frames compressed as a clipped last window
    ref13 = vx.prefill(_ids(prefix, suffix), frames[:13], ratio=4)
    np.testing.assert_allclose(first.logits, ref13.logits, atol=1e-5, rtol=0)
    assert s.sizes == before and s.state.pending_frames == 3  # nothing consumed
    again = s.prefill(suffix)
    np.testing.assert_array_equal(again.logits, first.logits)
    s.add_frames(frames[13:])
    ref = vx.prefill(_ids(prefix, suffix), frames, ratio=4)
    np.testing.assert_allclose(s.prefill(suffix).logits, ref.logits, atol=1e-5, rtol=0)


def test_generate_equals_one_call(vx, video):
    prefix, suffix, frames = video
    s = _session(vx, prefix, frames, 7)
    new = s.generate(suffix, max_new_tokens=6, do_sample=False, stop_ids=[])
    ref = vx.generate(_ids(prefix, suffix), frames, ratio=8, max_new_tokens=6, do_sample=False, stop_ids=[])
    np.testing.assert_array_equal(new, ref)
    # sampling with the same seed draws the same tokens (same logits, same key sequence)
    kw = dict(max_new_tokens=5, do_sample=True, temperature=1.5, seed=3, stop_ids=[])
    np.testing.assert_array_equal(s.generate(suffix, **kw), vx.generate(_ids(prefix, suffix), frames, ratio=8, **kw))


def test_step_random_ratios_follow_windows_not_chunks(vx, video):
    prefix, suffix, frames = video
    frames = np.concatenate([frames, frames[:9]])  # 32 frames: 3 complete windows + 2 pending
    ratios = [2, 4, 8, 12, 16]
    vx.ratio_rng = np.random.default_rng(42)  # a fresh model's generator (the original's seed)
    ref = vx.prefill(_ids(prefix, suffix), frames, ratio=ratios)
    for chunk in (3, 32):
        s = _session(vx, prefix, frames, chunk, ratio=ratios)
        res = s.prefill(suffix)
        assert res.ratios == ref.ratios
        np.testing.assert_allclose(res.logits, ref.logits, atol=1e-5, rtol=0)
    # the pending window's draw is not consumed: it is drawn again once the window is complete
    s = _session(vx, prefix, frames[:22], 22, ratio=ratios)
    asked = s.prefill(suffix).ratios
    s.add_frames(frames[22:])
    assert s.state.ratios[:2] == asked[:2] == ref.ratios[:2]
    assert s.state.ratios == ref.ratios[:3]


def test_saved_session_continues(vx, video, tmp_path):
    prefix, suffix, frames = video
    s = _session(vx, prefix, frames[:15], 15, ratio=[4, 8])
    path = tmp_path / "cam.session"
    s.save(path)
    saved_sizes = s.sizes
    loaded = vx.load_session(path)
    assert loaded.state.pending_frames == 5 and loaded.frames == 15 and loaded.state.ratio == (4, 8)
    for sess in (s, loaded):
        sess.add_frames(frames[15:])
    a, b = s.prefill(suffix), loaded.prefill(suffix)
    assert a.ratios == b.ratios
    np.testing.assert_allclose(b.logits, a.logits, atol=1e-5, rtol=0)
    _assert_same_memory(b.memory, a.memory)
    # a session file is also a video memory file (the complete windows)
    mem = vx.load_memory(path)
    assert mem.sizes == saved_sizes and mem.frames == 10


def test_load_session_from_a_saved_video_memory(vx, video, tmp_path):
    prefix, suffix, frames = video
    res = vx.prefill(_ids(prefix, suffix), frames[:10], ratio=8)
    vx.save_memory(tmp_path / "v.mem", res.video_memory)
    s = vx.load_session(tmp_path / "v.mem", ratio=8)
    s.add_frames(frames[10:])
    ref = vx.prefill(_ids(prefix, suffix), frames, ratio=8)
    np.testing.assert_allclose(s.prefill(suffix).logits, ref.logits, atol=1e-5, rtol=0)


def test_bad_input(vx, video):
    prefix, suffix, frames = video
    with pytest.raises(ValueError, match="-200"):
        vx.session(_ids(prefix, suffix))
    with pytest.raises(ConfigError, match="not positive"):
        vx.session(prefix, ratio=0)
    s = vx.session(prefix, ratio=8)
    s.add_frames(frames[:3])
    with pytest.raises(ValueError, match="one form"):
        s.add_frames(np.zeros((2, 3, 336, 336), np.float32))
    with pytest.raises(ValueError, match="empty"):
        s.prefill([])
    s = vx.session(prefix, ratio=[32])
    s.add_frames(frames[:1])
    with pytest.raises(ConfigError, match="no ratio"):
        s.prefill(suffix)  # 144 tokens: 32 does not divide the clipped window


def test_golden_video_cases_through_a_session(golden_dir, golden_vx):
    """The original's golden outputs (a partial last window) reached by adding the frames in chunks."""
    from safetensors.numpy import load_file

    from vxl_jax.infer.api import split_prompt

    gx = golden_vx  # the converted checkpoint in float32, shared by the run (tests/conftest.py)
    C = load_file(str(golden_dir / "cases.safetensors"))
    prefix, suffix = split_prompt(C["video.input_ids"][0])
    px = C["video.frames_u8"].astype(np.float32) / 64.0 - 2.0
    for ratio, chunk in ((2, 1), (16, 7)):
        s = gx.session(prefix, ratio=ratio)
        for i in range(0, len(px), chunk):
            s.add_frames(px[i:i + chunk])
        res = s.prefill(suffix)
        np.testing.assert_allclose(res.logits, C[f"video_r{ratio}.logits_forward"], atol=1e-4, rtol=0)
        ref = gx.prefill(C["video.input_ids"][0], px, ratio=ratio)
        np.testing.assert_allclose(res.logits, ref.logits, atol=1e-5, rtol=0)
        _assert_same_memory(res.memory, ref.memory)
        np.testing.assert_array_equal(s.generate(suffix, max_new_tokens=6), C[f"video_r{ratio}.generated_ids"])


def test_video_memory_outlives_later_frames(vx, video):
    prefix, suffix, frames = video
    s = _session(vx, prefix, frames[:10], 10)  # one complete window, nothing pending
    vm = s.video_memory()
    s.add_frames(frames[10:])  # donates the session's memory, not the one handed out
    ref = vx.prefill(_ids(prefix, suffix), frames[:10], ratio=8)
    kw = dict(max_new_tokens=3, stop_ids=[], do_sample=False)
    np.testing.assert_array_equal(vx.generate(suffix, None, memory=vm, **kw),
                                  vx.generate(_ids(prefix, suffix), frames[:10], ratio=8, **kw))
    assert vm.sizes == ref.video_memory.sizes
