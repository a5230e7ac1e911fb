"""The frames ``infer.py`` feeds its session: a video read up front (uniform ``--frames``), streamed a window at
a time (``--fps``), or the generated sample video when no ``--video`` is given. Opened before the model loads,
so a bad video is reported at once."""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
import warnings
from collections.abc import Iterator

import numpy as np

from vxl_jax.cli.infer_report import log
from vxl_jax.media.video import TimedReader, VideoStream, load_video, write_sample_video


@dataclasses.dataclass
class VideoFrames:
    """Frame chunks for a session (uint8 [n, S, S, 3], resized + center-cropped), ``total`` frames in all.
    ``reader.seconds``: the time spent reading them while they were taken (decoding, for a stream)."""

    reader: TimedReader
    total: int

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.reader


def open_video(a: argparse.Namespace, cfg, timings: dict) -> VideoFrames | None:
    """The command's video (None with ``--memory``): with ``--fps`` a stream read a window at a time, else every
    frame read now (``timings['read_video_s']``). Without ``--video`` the generated sample video is used."""
    if a.memory is not None:
        return None
    if a.video is None:
        a.video = sample_video_path()
        if not a.quiet:
            log(f"no --video given: using a generated sample video (moving shapes): {a.video}")
    if a.fps is not None:
        stream = VideoStream(a.video, fps=a.fps, size=cfg.vision.image_size, batch=cfg.beacon.frames_per_window)
        _describe(a, stream.info, f"streaming {stream.info['num_frames']} frames at {a.fps:g} fps")
        video = VideoFrames(TimedReader(stream), len(stream))
    else:
        frames = read_frames(a, cfg, timings)
        video = VideoFrames(TimedReader([frames]), len(frames))
    warn_last_window(cfg, video.total, a.ratio)
    return video


def read_frames(a: argparse.Namespace, cfg, timings: dict) -> np.ndarray:
    """``--frames`` uniformly sampled frames -> uint8 [F, S, S, 3] resized + center-cropped (CLIP normalization
    happens on the device); ``timings['read_video_s']``: the decoding time."""
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the clipped case is reported below, once, in our own words
        frames, info = load_video(a.video, a.frames, size=cfg.vision.image_size)  # resized as decoded
    timings["read_video_s"] = time.perf_counter() - t
    if info["clipped"]:
        log(f"warning: {a.frames} frames requested but {a.video} has only {info['total_frames']}: "
            f"using all {info['total_frames']} frames")
    _describe(a, info, f"using {info['num_frames']} frames")
    return frames


def _describe(a: argparse.Namespace, info: dict, sampling: str) -> None:
    if not a.quiet:
        log(f"video: {a.video} ({info['total_frames']} frames, {info['fps']:.2f} fps, "
            f"{info['width']}x{info['height']}); {sampling}")


def warn_last_window(cfg, frames: int, ratio) -> None:
    """The original keeps a ratio that does not divide the last (partial) window; say what that costs.
    (A list of ratios draws, per window, only among the ratios that divide it.)"""
    if isinstance(ratio, list):
        return
    b = cfg.beacon
    last = frames * b.tokens_per_frame % b.window
    if last and last % ratio:
        log(f"warning: the last window has {last} visual tokens, not a multiple of --ratio {ratio}: its last "
            f"{last % ratio} tokens are summarised by no beacon (as in the original); choose a frame count or "
            f"ratio that divides it")


def sample_video_path() -> str:
    """The generated sample video, in the user's cache (never the current directory); written once."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "vxl_jax")
    path = os.path.join(folder, "sample.mp4")
    if not os.path.isfile(path):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            folder = os.path.join(tempfile.gettempdir(), "vxl_jax")
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, "sample.mp4")
        tmp = f"{path}.{os.getpid()}.tmp.mp4"
        write_sample_video(tmp)
        os.replace(tmp, path)  # atomic: a concurrent run never reads a half-written file
    return path
