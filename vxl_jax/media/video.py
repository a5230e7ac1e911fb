"""Video input: frame sampling with decord (docs/algorithm.md §9), the one mp4 writer and a synthetic sample video
(PyAV).

    frames, info = load_video("clip.mp4", num_frames=128)   # uint8 [F, H, W, 3] RGB

Frame indices come from :func:`sample_indices`, the one sampling rule of the package (inference, streaming,
evaluation, training data): ``num_frames`` uniform (``np.linspace(0, total - 1, F, dtype=int)``, both ends
included, truncated, as the original demo / eval code), or a fixed ``fps`` (every ``round(native / fps)``-th
frame, the original's training rule), optionally capped. Long videos stream: ``VideoStream(path, fps=1,
size=336)`` yields a batch of frames at a time, ``iter_frame_chunks`` batches any frame iterator,
``read_raw_frames`` reads a raw RGB24 pipe or growing file (live input). Bad input raises ``VideoError``
(a ``ValueError``) with one readable line naming the problem.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings
from typing import Callable

import numpy as np

from vxl_jax.media.preprocess import resize_crop_frames
from vxl_jax.media.pyav_reader import PyAVReader, readable_frames


class VideoError(ValueError):
    """A video that cannot be used: missing, unreadable, no video stream, or no frames."""


def fps_step(native_fps: float | None, fps: float) -> int:
    """Frames of the source per kept frame when sampling ``fps`` frames per second from a video at ``native_fps``:
    ``round(native_fps / fps)``, at least 1 (1 when the native rate is unknown, i.e. None or 0). The original's
    training rule (``process_video_with_pyav``); a live stream at ``native_fps`` keeps every ``fps_step``-th frame."""
    if not fps or fps <= 0:
        raise VideoError(f"fps must be positive, got {fps}")
    return max(1, int(round(native_fps / fps))) if native_fps and native_fps > 0 else 1


def sample_indices(total_frames: int, native_fps: float | None = None, *, num_frames: int | None = None,
                   fps: float | None = None, max_frames: int | None = None) -> np.ndarray:
    """The one frame-sampling rule (docs/algorithm.md §8-§9) -> int64 indices [F], increasing.

    - ``num_frames`` (uniform count, inference / evaluation): ``np.linspace(0, total - 1, F, dtype=int)``,
      endpoints included, truncated; asking for at least ``total`` frames gives every frame once.
    - ``fps`` (fixed rate, streaming / training / evaluation ``--fps``): every :func:`fps_step`-th frame from
      the first (``native_fps`` is the video's average rate; unknown -> every frame).
    - ``max_frames`` (the cap, training's ``frames_upbound``): when the fps rule gives more frames, the video is
      sampled uniformly instead, ``linspace(0, total - 1, max_frames)`` over all its frames, as the original's
      training does. With ``num_frames`` the count is capped at ``max_frames``.
    Exactly one of ``num_frames`` / ``fps``. Bad arguments raise :class:`VideoError` (a ``ValueError``).
    """
    if total_frames <= 0:
        raise VideoError(f"the video has no frames (total={total_frames})")
    if (num_frames is None) == (fps is None):
        raise VideoError("give either num_frames (uniform sampling) or fps (frames per second)")
    if max_frames is not None and max_frames < 1:
        raise VideoError(f"the frame cap must be >= 1, got {max_frames}")
    if fps is not None:
        idx = np.arange(0, total_frames, fps_step(native_fps, fps), dtype=np.int64)
        if max_frames is None or len(idx) <= max_frames:
            return idx
        num_frames = max_frames
    if num_frames <= 0:
        raise VideoError(f"number of frames must be >= 1, got {num_frames}")
    count = num_frames if max_frames is None else min(num_frames, max_frames)
    if count >= total_frames:
        return np.arange(total_frames, dtype=np.int64)
    return np.linspace(0, total_frames - 1, count, dtype=np.int64)


@contextlib.contextmanager
def _captured_stderr():
    """Silence C-level stderr (decord / ffmpeg log lines) and collect it: yields a callable -> text."""
    try:
        fd = 2
        saved = os.dup(fd)
    except OSError:  # pragma: no cover - no usable fd 2
        yield lambda: ""
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            os.dup2(tmp.fileno(), fd)
            yield lambda: (tmp.seek(0), tmp.read().decode("utf-8", "replace"))[1]
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def _diagnose(path: str) -> str:
    """Why a file decord could not open is unusable, in a few words (PyAV probe)."""
    import av

    try:
        with av.open(path) as c:
            if not c.streams.video:
                return "it has no video stream"
            for _ in c.decode(video=0):
                return "the decoder (decord) could not read it"
            return "it has zero frames"
    except av.error.FFmpegError as e:
        reason = getattr(e, "strerror", None) or str(e)
        return f"not a readable video ({reason})"
    except Exception as e:  # pragma: no cover - unexpected PyAV failure
        return f"not a readable video ({type(e).__name__}: {e})"


def _fallback(path: str):
    """A file decord cannot open: the frames PyAV can decode (an mp4 cut short), with a warning naming how many;
    else ``VideoError`` saying why it is unusable."""
    readable, fps = readable_frames(path)
    reason = _diagnose(path)
    if readable == 0 or not reason.startswith("the decoder"):
        raise VideoError(f"cannot read video {path}: {reason}")
    warnings.warn(f"{path} is damaged or cut short (decord cannot open it): using the {readable} frames that can "
                  f"be decoded", stacklevel=3)
    return PyAVReader(path, readable, fps)


def open_video(path):
    """decord ``VideoReader(path, ctx=cpu(0))`` with clear ``VideoError`` messages (a file decord cannot open
    whose first frames PyAV decodes: those frames, with a warning; :mod:`vxl_jax.media.pyav_reader`)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"video file not found: {path}")
    if not os.path.isfile(path):
        raise VideoError(f"video path is not a file: {path}")
    if os.path.getsize(path) == 0:
        raise VideoError(f"cannot read video {path}: the file is empty")
    from decord import VideoReader, cpu

    try:
        with _captured_stderr():
            vr = VideoReader(path, ctx=cpu(0), num_threads=1)
    except Exception:
        vr = _fallback(path)
    if len(vr) == 0:
        raise VideoError(f"cannot use video {path}: it has zero frames")
    return vr


class VideoStream:
    """A video file read a batch of frames at a time: iterate for uint8 chunks [n, H, W, 3] (or
    [n, size, size, 3] resized + center-cropped with ``size``), in order, ``batch`` frames each.

    Sampling (:func:`sample_indices`, the rule evaluation and training use too): ``num_frames`` uniform
    frames, or ``fps`` frames per second; ``max_frames`` caps either (over the cap, ``fps`` sampling becomes
    uniform). Only one batch of decoded frames exists at a time, so memory does not grow with the video's
    length. ``len(stream)`` and ``stream.indices`` are known before reading; ``stream.info`` as
    :func:`load_video`'s.
    """

    def __init__(self, path, num_frames: int | None = None, fps: float | None = None, size: int | None = None,
                 batch: int = 16, max_frames: int | None = None):
        if (num_frames is None) == (fps is None):
            raise VideoError("give either num_frames (uniform sampling) or fps (frames per second)")
        if num_frames is not None and (int(num_frames) != num_frames or num_frames < 1):
            raise VideoError(f"number of frames must be a positive integer, got {num_frames!r}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.path, self.size, self.batch = os.fspath(path), size, int(batch)
        self._vr = open_video(path)
        total = len(self._vr)
        avg_fps = float(self._vr.get_avg_fps() or 0.0)
        self.indices = sample_indices(total, avg_fps, num_frames=None if num_frames is None else int(num_frames),
                                      fps=None if fps is None else float(fps), max_frames=max_frames)
        first = self._vr[0].shape
        self.info = {"path": self.path, "total_frames": total, "fps": avg_fps,
                     "duration_s": total / avg_fps if avg_fps > 0 else None, "indices": self.indices.tolist(),
                     "num_frames": len(self.indices), "requested": num_frames if num_frames is not None else None,
                     "sample_fps": fps, "clipped": num_frames is not None and num_frames > total,
                     "height": int(first[0]), "width": int(first[1])}
        self._vr.seek(0)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        for start in range(0, len(self.indices), self.batch):
            part = decode_frames(self._vr, self.indices[start:start + self.batch], self.path)
            if self.size is not None:
                part = resize_crop_frames(part, self.size)
            yield part


def iter_frame_chunks(frames, batch: int = 16, size: int | None = None):
    """Any iterable of frames (uint8 [H, W, 3] each) or of frame chunks ([n, H, W, 3]) -> uint8 chunks of up to
    ``batch`` frames (resized + center-cropped with ``size``), in order. A chunk is yielded as soon as it is
    full, so a live source is consumed as it comes."""
    buf = []
    for item in frames:
        item = np.asarray(item)
        if item.ndim == 3:
            item = item[None]
        if item.ndim != 4 or item.shape[-1] != 3 or item.dtype != np.uint8:
            raise VideoError(f"frames must be uint8 [H, W, 3] (or chunks [n, H, W, 3]), got {item.dtype} {item.shape}")
        buf.extend(item)
        while len(buf) >= batch:
            yield _chunk(buf[:batch], size)
            buf = buf[batch:]
    if buf:
        yield _chunk(buf, size)


def _chunk(frames: list, size: int | None) -> np.ndarray:
    out = np.stack(frames)
    if size is not None:
        out = resize_crop_frames(out, size)
    return out


def read_raw_frames(stream, width: int, height: int, follow: float = 0.0, poll: float = 0.2,
                    on_partial: Callable[[str], None] | None = None):
    """Frames from a raw RGB24 byte stream (a pipe, a FIFO, or a file another process is writing, e.g.
    ``ffmpeg -i CAMERA -f rawvideo -pix_fmt rgb24 -s WxH out.rgb``) -> uint8 [height, width, 3] each.

    ``stream``: a binary file object or a path. At end of data the reader stops, or with ``follow`` > 0 waits
    for more (a growing file) and stops after ``follow`` seconds without new bytes. A stream that ends partway
    into a frame (a producer stopped mid-frame, or frames of another size than ``width`` x ``height``) is said
    so: ``on_partial(message)`` (default: a ``UserWarning``); the partial frame is not used.
    """
    frame_bytes = width * height * 3
    own = not hasattr(stream, "read")
    f = open(stream, "rb") if own else stream
    try:
        buf, idle, frames = b"", 0.0, 0
        while True:
            data = f.read(frame_bytes - len(buf))
            if data:
                buf += data
                idle = 0.0
                if len(buf) == frame_bytes:
                    yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
                    buf, frames = b"", frames + 1
                continue
            if idle >= follow:
                break
            time.sleep(poll)
            idle += poll
    finally:
        if own:
            f.close()
    if buf:
        message = (f"the raw stream ended {len(buf)} bytes into frame {frames + 1} (a {width}x{height} RGB24 frame "
                   f"is {frame_bytes} bytes; {frames * frame_bytes + len(buf)} bytes in all, not a multiple): the "
                   f"partial frame is not used; check the frame size (--live-size) or the producer")
        (on_partial or (lambda m: warnings.warn(m, stacklevel=2)))(message)


def load_video(path, num_frames: int, size: int | None = None, batch: int = 32) -> tuple[np.ndarray, dict]:
    """Decode ``num_frames`` uniformly spaced frames -> (uint8 [F, H, W, 3] RGB, info).

    With ``size``, frames are decoded ``batch`` at a time and resized + center-cropped as they come
    (:func:`vxl_jax.media.preprocess.resize_crop_frames`) -> uint8 [F, size, size, 3]: the full-resolution
    frames are never all in memory.

    info: path, total_frames, fps, duration_s, indices (list), num_frames (F actually returned),
    requested, clipped (True when fewer frames than requested exist: every frame is used and a
    warning is issued).
    """
    if int(num_frames) != num_frames or num_frames < 1:
        raise VideoError(f"number of frames must be a positive integer, got {num_frames!r}")
    num_frames = int(num_frames)
    vr = open_video(path)
    total = len(vr)
    idx = sample_indices(total, num_frames=num_frames)
    clipped = num_frames > total
    if clipped:
        warnings.warn(f"{num_frames} frames requested but {path} has only {total}: using all {total} frames",
                      stacklevel=2)
    if size is None:
        frames = decode_frames(vr, idx, path)
        height, width = frames.shape[1:3]
    else:
        frames = np.empty((len(idx), size, size, 3), np.uint8)
        for start in range(0, len(idx), batch):
            part = decode_frames(vr, idx[start:start + batch], path)
            height, width = part.shape[1:3]
            frames[start:start + len(part)] = resize_crop_frames(part, size)
    fps = float(vr.get_avg_fps() or 0.0)
    info = {
        "path": os.fspath(path), "total_frames": total, "fps": fps,
        "duration_s": total / fps if fps > 0 else None, "indices": idx.tolist(),
        "num_frames": int(frames.shape[0]), "requested": num_frames, "clipped": clipped,
        "height": int(height), "width": int(width),
    }
    return frames, info


def decode_frames(vr, idx: np.ndarray, path) -> np.ndarray:
    """Frames ``idx`` of an open video -> uint8 [len(idx), H, W, 3] (VideoError when decoding fails)."""
    try:
        with _captured_stderr():
            frames = vr.get_batch(idx).asnumpy()
    except Exception as e:
        raise VideoError(f"cannot decode frames of {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideoError(f"decoded frames of {path} have unexpected layout {frames.dtype} {frames.shape}")
    return frames


# ---------------------------------------------------------------------------- synthetic sample video

COUNTER_BITS = 12


def draw_counter(frame: np.ndarray, index: int, bits: int = COUNTER_BITS) -> None:
    """Write ``index`` in place as ``bits`` black/white blocks (MSB first) across the top band of a frame."""
    h, w = frame.shape[:2]
    bw, bh = w // bits, max(8, h // 10)
    for b in range(bits):
        on = (index >> (bits - 1 - b)) & 1
        frame[:bh, b * bw:(b + 1) * bw] = 255 if on else 0


def read_counter(frame: np.ndarray, bits: int = COUNTER_BITS) -> int:
    """Inverse of ``draw_counter`` on a decoded (lossy) frame: mean of each block's interior > 128."""
    h, w = frame.shape[:2]
    bw, bh = w // bits, max(8, h // 10)
    value = 0
    for b in range(bits):
        block = frame[bh // 4: bh - bh // 4, b * bw + bw // 4: (b + 1) * bw - bw // 4]
        value = (value << 1) | int(block.mean() > 128)
    return value


def sample_frame(index: int, num_frames: int, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """One synthetic RGB frame [H, W, 3] uint8: gradient background, a red square moving right,
    a blue disc moving down, a green bar whose length grows with time, and the frame counter on top."""
    w, h = size
    t = index / max(1, num_frames - 1)
    yy, xx = np.mgrid[0:h, 0:w]
    frame = np.empty((h, w, 3), np.uint8)
    frame[..., 0] = (60 + 80 * xx / max(1, w - 1)).astype(np.uint8)
    frame[..., 1] = (60 + 80 * yy / max(1, h - 1)).astype(np.uint8)
    frame[..., 2] = np.uint8(90)
    band = max(8, h // 10)
    s = max(4, h // 6)
    x0 = int(t * (w - s))
    y0 = band + (h - band - s) // 3
    frame[y0:y0 + s, x0:x0 + s] = (230, 40, 40)
    r = max(3, h // 10)
    cx, cy = w - w // 4, band + r + int(t * (h - band - 2 * r - 1))
    frame[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (40, 60, 230)
    frame[h - max(4, h // 16):, : max(1, int(t * w))] = (40, 220, 60)
    draw_counter(frame, index)
    return frame


def _encoder(codecs: tuple[str, ...]) -> str:
    """The first of ``codecs`` PyAV can encode with (RuntimeError when none)."""
    import av

    for name in codecs:
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.error.FFmpegError, ValueError):  # not built into this ffmpeg
            continue
    raise RuntimeError(f"no video encoder among {list(codecs)} in this PyAV build")


def write_video(path, frames, fps: int, codec: str | None = None, crf: int = 12) -> str:
    """Write RGB frames (uint8 [N, H, W, 3], or any iterable of [H, W, 3]; H, W even) as a video with PyAV: H.264
    (``crf`` quality) by default, MPEG-4 when x264 is missing or ``codec="mpeg4"``. Frames are encoded as they
    come, so a generator never holds the whole video. -> the path."""
    import av

    name = _encoder((codec,) if codec else ("libx264", "mpeg4"))
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, "w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(name, rate=fps)
                stream.height, stream.width, stream.pix_fmt = frame.shape[0], frame.shape[1], "yuv420p"
                if name == "libx264":
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
                else:
                    stream.bit_rate = 4_000_000
            av_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(av_frame):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"no frames to write to {path}")
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_sample_video(path, num_frames: int = 120, size: tuple[int, int] = (320, 240), fps: int = 24,
                       codec: str | None = None) -> str:
    """Write a synthetic video (moving shapes + frame counter, see ``sample_frame``) with :func:`write_video`.

    size is (width, height), both even. codec: "libx264" (default when available) or "mpeg4".
    Returns the path.
    """
    w, h = int(size[0]), int(size[1])
    if w % 2 or h % 2 or w < 2 * COUNTER_BITS or h < 16:
        raise ValueError(f"sample video size must be even and at least {2 * COUNTER_BITS}x16, got {w}x{h}")
    if num_frames < 1 or num_frames >= 2 ** COUNTER_BITS:
        raise ValueError(f"num_frames must be in [1, {2 ** COUNTER_BITS - 1}], got {num_frames}")
    frames = (sample_frame(i, num_frames, (w, h)) for i in range(num_frames))
    return write_video(path, frames, fps, codec=codec, crf=18)


class TimedReader:
    """Iterates ``chunks`` (any iterable of frame batches, e.g. a :class:`VideoStream`) and adds the seconds
    spent producing each item to ``seconds``: the reading/decoding time, apart from what the caller does
    with each chunk."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self.seconds = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t = time.perf_counter()
        try:
            return next(self._chunks)
        finally:
            self.seconds += time.perf_counter() - t
