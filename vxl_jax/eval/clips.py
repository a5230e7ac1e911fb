"""Frames of a question's video when it is not a whole file: a clip of it (MVBench's ``start`` / ``end`` seconds)
or a folder of frame images (MVBench's episodic reasoning, TVQA frames at 3 fps).

The frames are chosen by the one sampling rule (:func:`vxl_jax.media.video.sample_indices`) applied to the
clip's frames: ``frames`` uniform frames over the clip, or ``fps`` frames per second capped at ``frames``. A clip
is the source frames ``round(start * rate)`` .. ``round(end * rate)`` (clamped to the video), as the MVBench
release computes its bounds.
"""

from __future__ import annotations

import os

import numpy as np

from vxl_jax.media.preprocess import resize_crop_frames
from vxl_jax.media.video import VideoError, decode_frames, open_video, sample_indices

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_BATCH = 32


def clip_range(total: int, rate: float, clip) -> tuple[int, int]:
    """Source frame range [lo, hi) of ``clip`` = (start, end) seconds in a ``total``-frame video at ``rate``
    (the whole video for ``None``)."""
    if clip is None:
        return 0, total
    lo = max(0, min(total - 1, int(round(clip[0] * rate))))
    hi = max(lo, min(total - 1, int(round(clip[1] * rate))))
    return lo, hi + 1


def _indices(n: int, rate: float, frames: int | None, fps: float | None, default: int) -> np.ndarray:
    if fps is None:
        return sample_indices(n, rate, num_frames=frames or default)
    return sample_indices(n, rate, fps=fps, max_frames=frames)


def read_clip(path: str, size: int, clip, frames: int | None, fps: float | None, default: int) -> np.ndarray:
    """uint8 [F, size, size, 3]: the sampled frames of ``clip`` (seconds) of the video file at ``path``."""
    vr = open_video(path)
    rate = float(vr.get_avg_fps() or 0.0)
    if clip is not None and rate <= 0:
        raise VideoError(f"{path}: no frame rate, so the clip {clip} s cannot be found")
    lo, hi = clip_range(len(vr), rate, clip)
    idx = lo + _indices(hi - lo, rate, frames, fps, default)
    parts = [resize_crop_frames(decode_frames(vr, idx[s:s + _BATCH], path), size) for s in range(0, len(idx), _BATCH)]
    return np.concatenate(parts)


def frame_files(folder: str) -> list[str]:
    """The frame images of a folder, in name order (VideoError when there are none)."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise VideoError(f"frame folder {folder} has no {'/'.join(IMAGE_EXTENSIONS)} images")
    return [os.path.join(folder, n) for n in names]


def read_frame_folder(folder: str, size: int, rate: float, clip, frames: int | None, fps: float | None,
                      default: int) -> np.ndarray:
    """uint8 [F, size, size, 3]: the sampled frames of ``clip`` (seconds; None: all) of a folder of frame images
    taken at ``rate`` frames per second."""
    from PIL import Image

    files = frame_files(folder)
    lo, hi = clip_range(len(files), rate, clip)
    out = []
    for i in lo + _indices(hi - lo, rate, frames, fps, default):
        try:
            with Image.open(files[i]) as im:
                out.append(resize_crop_frames(np.asarray(im.convert("RGB")), size)[0])
        except OSError as e:
            raise VideoError(f"cannot read frame {files[i]}: {e}") from None
    return np.stack(out)


def read_item_frames(path: str, item, size: int, frames: int | None, fps: float | None, default: int) -> np.ndarray:
    """The frames a question is asked about: the item's clip of ``path`` where it applies (``item.clip_paths``:
    the release's full videos; a pre-cut copy found elsewhere is read whole), a frame folder, or None when the
    whole file is read by the run's usual reader."""
    clip = item.clip if any(path.endswith(os.path.normpath(rel)) for rel in item.clip_paths) else None
    if os.path.isdir(path):
        return read_frame_folder(path, size, float(item.frame_fps or 1.0), clip, frames, fps, default)
    if clip is None:
        return None
    return read_clip(path, size, clip, frames, fps, default)
