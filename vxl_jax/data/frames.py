"""Training-time visual input (docs/algorithm.md §8): 1-fps video sampling capped at ``frames_upbound``.

Training video (LLaVA-NeXT ``process_video_with_pyav``): take every ``round(avg_fps / video_fps)``-th
frame (1 fps by default); if that gives more than ``frames_upbound`` frames, use
``np.linspace(0, total - 1, frames_upbound, dtype=int)`` instead. Decoding uses decord
(:func:`vxl_jax.media.video.open_video`, clear ``VideoError`` for missing/corrupt files).
An ``image`` record is one frame (no anyres tiling in training; see the README of train.py).
"""

from __future__ import annotations

import numpy as np

from vxl_jax.media.video import VideoError, open_video


def training_frame_indices(total: int, avg_fps: float, frames_upbound: int, video_fps: float = 1.0) -> np.ndarray:
    """Frame indices [F] (int64) for a video of ``total`` frames at ``avg_fps``."""
    if total <= 0:
        raise VideoError(f"the video has no frames (total={total})")
    if frames_upbound < 1:
        raise ValueError(f"frames_upbound must be >= 1, got {frames_upbound}")
    step = max(1, int(round(avg_fps / video_fps))) if avg_fps and avg_fps > 0 else 1
    idx = np.arange(0, total, step, dtype=np.int64)
    if len(idx) > frames_upbound:
        idx = np.linspace(0, total - 1, frames_upbound, dtype=int).astype(np.int64)
    return idx


def load_training_video(path, frames_upbound: int, video_fps: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """-> (uint8 frames [F, H, W, 3] RGB, indices [F]). Raises VideoError for unusable files."""
    vr = open_video(path)
    idx = training_frame_indices(len(vr), float(vr.get_avg_fps() or 0.0), frames_upbound, video_fps)
    try:
        frames = vr.get_batch(idx).asnumpy()
    except Exception as e:  # decord raises its own error types
        raise VideoError(f"cannot decode frames of {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    return frames, idx


def load_image(path) -> np.ndarray:
    """uint8 [1, H, W, 3] RGB from an image file (clear error when missing/unreadable)."""
    import os

    from PIL import Image

    if not os.path.isfile(path):
        raise VideoError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))[None]
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        raise VideoError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
