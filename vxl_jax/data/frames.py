"""Training-time visual input (docs/algorithm.md §8): 1-fps video sampling capped at ``frames_upbound``.

Training video (the original's ``process_video_with_pyav``): every ``round(avg_fps / video_fps)``-th frame
(1 fps by default); if that gives more than ``frames_upbound`` frames,
``np.linspace(0, total - 1, frames_upbound, dtype=int)`` instead. The rule is
:func:`vxl_jax.media.video.sample_indices` (``fps=video_fps, max_frames=frames_upbound``), the one inference
and evaluation use. Decoding uses decord (:func:`vxl_jax.media.video.open_video`, clear ``VideoError`` for
missing/corrupt files). An ``image`` record is one frame (no anyres tiling in training; see the README of
train.py).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from vxl_jax.media.video import VideoError, decode_frames, open_video, sample_indices


def load_training_video(path, frames_upbound: int, video_fps: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """-> (uint8 frames [F, H, W, 3] RGB, indices [F] int64). Raises VideoError for unusable files."""
    vr = open_video(path)
    idx = sample_indices(len(vr), float(vr.get_avg_fps() or 0.0), fps=video_fps, max_frames=frames_upbound)
    return decode_frames(vr, idx, path), idx


def load_image(path) -> np.ndarray:
    """uint8 [1, H, W, 3] RGB from an image file (clear error when missing/unreadable)."""
    if not os.path.isfile(path):
        raise VideoError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))[None]
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        raise VideoError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
