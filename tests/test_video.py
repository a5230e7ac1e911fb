"""Video input: uniform sampling on real encoded files (frame index read back from the pixels) and errors."""

import warnings

import numpy as np
import pytest

from vxl_jax.media.video import (VideoError, draw_counter, load_video, read_counter, sample_indices, write_sample_video)


@pytest.fixture(scope="module")
def h264_video(tmp_path_factory):
    return write_sample_video(tmp_path_factory.mktemp("v") / "s.mp4", num_frames=97, size=(160, 96), codec="libx264")


def test_sample_indices_match_linspace_truncation():
    np.testing.assert_array_equal(sample_indices(10, num_frames=4), [0, 3, 6, 9])
    np.testing.assert_array_equal(sample_indices(100, num_frames=7), [0, 16, 33, 49, 66, 82, 99])  # floor, not round
    np.testing.assert_array_equal(sample_indices(5, num_frames=1), [0])
    np.testing.assert_array_equal(sample_indices(5, num_frames=5), np.arange(5))
    np.testing.assert_array_equal(sample_indices(5, num_frames=9), np.arange(5))  # more than available: all frames once
    for total, f in [(97, 12), (1000, 900), (301, 128)]:
        idx = sample_indices(total, num_frames=f)
        assert idx[0] == 0 and idx[-1] == total - 1 and len(idx) == f and np.all(np.diff(idx) > 0)
    with pytest.raises(VideoError):
        sample_indices(0, num_frames=4)
    with pytest.raises(VideoError):
        sample_indices(10, num_frames=0)


def test_counter_roundtrip_on_raw_frames():
    frame = np.full((48, 96, 3), 120, np.uint8)
    for i in [0, 1, 5, 1234, 4095]:
        draw_counter(frame, i)
        assert read_counter(frame) == i


@pytest.mark.parametrize("num_frames", [1, 12, 32, 97])
def test_load_video_returns_the_linspace_frames(h264_video, num_frames):
    frames, info = load_video(h264_video, num_frames)
    assert frames.dtype == np.uint8 and frames.shape == (num_frames, 96, 160, 3)
    expected = np.linspace(0, 96, num_frames, dtype=int)
    assert info["indices"] == expected.tolist()
    assert [read_counter(f) for f in frames] == expected.tolist()  # the decoded pixels are those frames
    assert info["total_frames"] == 97 and info["num_frames"] == num_frames and not info["clipped"]
    assert info["fps"] == pytest.approx(24.0)


def test_load_video_resized_in_batches(h264_video):
    """``size``: decoded a few frames at a time and resized as they come; equals resizing the full decode."""
    from vxl_jax.media.preprocess import resize_crop_frames

    full, info = load_video(h264_video, 12)
    small, small_info = load_video(h264_video, 12, size=64, batch=5)
    assert small.dtype == np.uint8 and small.shape == (12, 64, 64, 3)
    np.testing.assert_array_equal(small, resize_crop_frames(full, 64))
    assert small_info == info  # source size and indices are reported as before


def test_frames_are_rgb(tmp_path):
    path = write_sample_video(tmp_path / "c.mp4", num_frames=3, size=(96, 64), codec="libx264")
    frames, _ = load_video(path, 3)
    # sample_frame draws a red square (230, 40, 40) on the middle row band and a blue disc: find both hues
    f = frames[0].astype(int)
    red = (f[..., 0] > 180) & (f[..., 1] < 90) & (f[..., 2] < 90)
    blue = (f[..., 2] > 180) & (f[..., 0] < 90) & (f[..., 1] < 110)
    assert red.sum() > 20 and blue.sum() > 20


def test_mpeg4_codec(tmp_path):
    path = write_sample_video(tmp_path / "m.avi", num_frames=20, size=(96, 64), codec="mpeg4")
    frames, info = load_video(path, 5)
    assert [read_counter(f) for f in frames] == [0, 4, 9, 14, 19] == info["indices"]


def test_more_frames_than_the_video_uses_all_and_warns(h264_video):
    with pytest.warns(UserWarning, match="only 97"):
        frames, info = load_video(h264_video, 150)
    assert info["clipped"] and info["requested"] == 150 and info["num_frames"] == 97
    assert [read_counter(f) for f in frames] == list(range(97))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_errors(tmp_path):
    import av

    with pytest.raises(VideoError, match="not found"):
        load_video(tmp_path / "missing.mp4", 4)
    with pytest.raises(VideoError, match="not a file"):
        load_video(tmp_path, 4)
    with pytest.raises(VideoError, match="empty"):
        load_video(_write(tmp_path / "empty.mp4", b""), 4)
    with pytest.raises(VideoError, match="not a readable video"):
        load_video(_write(tmp_path / "junk.mp4", b"this is not a video " * 64), 4)
    # a valid container header announcing a video stream, but no frames
    with pytest.raises(VideoError, match="zero frames"):
        load_video(_write(tmp_path / "noframes.y4m", b"YUV4MPEG2 W64 H48 F24:1 Ip A1:1 C420jpeg\n"), 4)
    # audio only
    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(4):
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(VideoError, match="no video stream"):
        load_video(audio, 4)
    # a truncated real video: the header survives, the frames do not
    good = write_sample_video(tmp_path / "good.mkv", num_frames=30, size=(96, 64), codec="libx264")
    data = open(good, "rb").read()
    with pytest.raises(VideoError):
        load_video(_write(tmp_path / "trunc.mp4", data[: len(data) // 8]), 4)
    with pytest.raises(VideoError, match="positive integer"):
        load_video(good, 0)
    assert issubclass(VideoError, ValueError)


def test_load_video_does_not_warn_normally(h264_video):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_video(h264_video, 8)


def test_sample_video_arguments(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_sample_video(tmp_path / "x.mp4", num_frames=4, size=(97, 64))
    with pytest.raises(ValueError, match="num_frames"):
        write_sample_video(tmp_path / "x.mp4", num_frames=0)


# ---------------------------------------------------------------------------- streaming reader


@pytest.mark.parametrize("num_frames,batch", [(12, 5), (97, 16), (30, 30)])
def test_stream_uniform_equals_whole_file_reader(h264_video, num_frames, batch):
    from vxl_jax.media.video import VideoStream

    whole, info = load_video(h264_video, num_frames)
    stream = VideoStream(h264_video, num_frames=num_frames, batch=batch)
    assert len(stream) == num_frames and stream.indices.tolist() == info["indices"]
    chunks = list(stream)
    assert [len(c) for c in chunks][:-1] == [batch] * (len(chunks) - 1) and sum(map(len, chunks)) == num_frames
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    assert [read_counter(f) for f in np.concatenate(chunks)] == info["indices"]


@pytest.mark.parametrize("fps", [1, 2.5, 24, 50])
def test_stream_fps_equals_whole_file_fps_sampling(h264_video, fps):
    """Fixed fps: every round(24 / fps)-th frame, as the whole-file (training) reader samples at that rate."""
    from vxl_jax.data.frames import load_training_video
    from vxl_jax.media.video import VideoStream

    whole, idx = load_training_video(h264_video, frames_upbound=10**6, video_fps=fps)
    np.testing.assert_array_equal(sample_indices(97, 24.0, fps=fps), idx)
    np.testing.assert_array_equal(idx, np.arange(0, 97, max(1, round(24 / fps))))
    stream = VideoStream(h264_video, fps=fps, size=64, batch=7)
    assert stream.indices.tolist() == idx.tolist() and stream.info["num_frames"] == len(idx)
    frames = np.concatenate(list(stream))
    from vxl_jax.media.preprocess import resize_crop_frames

    np.testing.assert_array_equal(frames, resize_crop_frames(whole, 64))


def test_frame_iterators_and_raw_pipes(tmp_path):
    from vxl_jax.media.video import VideoError, VideoStream, iter_frame_chunks, read_raw_frames

    frames = np.random.default_rng(0).integers(0, 256, (11, 6, 8, 3), dtype=np.uint8)
    chunks = list(iter_frame_chunks(iter(frames), batch=4))
    assert [len(c) for c in chunks] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), frames)
    mixed = list(iter_frame_chunks([frames[:5], frames[5], frames[6:]], batch=3))  # chunks and single frames
    np.testing.assert_array_equal(np.concatenate(mixed), frames)
    path = tmp_path / "live.rgb"
    path.write_bytes(frames.tobytes() + b"\x00" * 7)  # a trailing partial frame is not yielded
    np.testing.assert_array_equal(np.stack(list(read_raw_frames(path, 8, 6))), frames)
    with pytest.raises(VideoError, match="uint8"):
        list(iter_frame_chunks([np.zeros((4, 4), np.float32)]))
    with pytest.raises(VideoError, match="either"):
        VideoStream(path, num_frames=3, fps=1)


@pytest.mark.parametrize("fps,cap", [(1, None), (2.5, None), (24, None), (50, None), (1, 3), (24, 40)])
def test_inference_evaluation_and_training_pick_the_same_frames(h264_video, fps, cap, monkeypatch):
    """infer.py --fps F (VideoStream), python -m vxl_jax.eval --fps F [--frames cap] (eval.run.open_frames) and the
    training data (frames_upbound = cap) choose the same indices, all through media.video.sample_indices."""
    from vxl_jax.data import frames as data_frames
    from vxl_jax.data.frames import load_training_video
    from vxl_jax.eval import run as eval_run
    from vxl_jax.media import video
    from vxl_jax.media.video import VideoStream

    calls = []
    monkeypatch.setattr(video, "sample_indices", lambda *a, **k: calls.append((a, k)) or sample_indices(*a, **k))
    infer_idx = VideoStream(h264_video, fps=fps, max_frames=cap).indices
    eval_idx = eval_run.open_frames(h264_video, 64, cap, fps).indices
    assert len(calls) == 2 and calls[0] == calls[1]  # both readers asked the one rule the same question
    _, train_idx = load_training_video(h264_video, cap or 10**6, fps)
    assert data_frames.sample_indices is sample_indices  # the data pipeline calls the same function
    expected = sample_indices(97, 24.0, fps=fps, max_frames=cap).tolist()
    assert infer_idx.tolist() == eval_idx.tolist() == train_idx.tolist() == expected
    frames = eval_run.read_frames(h264_video, 64, cap, fps)
    np.testing.assert_array_equal(frames, np.concatenate(list(VideoStream(h264_video, fps=fps, size=64, batch=5,
                                                                           max_frames=cap))))


def test_evaluation_uniform_frames_are_load_videos(h264_video):
    from vxl_jax.eval import run as eval_run

    for frames in (12, 200):  # 200 > 97: every frame
        assert eval_run.open_frames(h264_video, 64, frames, None).indices.tolist() == sample_indices(
            97, num_frames=frames).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = load_video(h264_video, 12, size=64)[0]
    np.testing.assert_array_equal(eval_run.read_frames(h264_video, 64, 12, None), whole)
