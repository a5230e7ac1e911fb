"""CLIP image preprocessing (openai/clip-vit-large-patch14-336 settings), PIL + numpy (docs/algorithm.md §9).

Bit-for-bit the same as transformers' ``CLIPImageProcessor`` (PIL backend) for uint8 RGB input:
1. resize so the shortest edge is ``size`` with PIL bicubic; the long edge is ``int(size * long / short)``
   (truncated, as transformers' ``get_resize_output_image_size``);
2. center crop ``size`` x ``size`` at offsets ``(h - size) // 2``, ``(w - size) // 2``;
3. rescale: ``uint8 -> float64 * (1/255) -> float32``;
4. normalize in float32: ``(x - mean) / std`` (3 and 4 are done as an exact 256-entry table lookup);
5. channels first.

Steps 1-2 (:func:`resize_crop_frames`) run on the host and keep uint8 [F, S, S, 3]; steps 3-5
(:func:`normalize_frames`, the same table as a gather) run on the device, so frames travel as uint8.
:func:`preprocess_frames` does all five on the host (float32 [F, 3, S, S]).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 336


def resize_shortest_edge(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H', W', 3] with min(H', W') == size (PIL bicubic)."""
    h, w = image.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_h, new_w = (new_long, size) if w <= h else (size, new_long)
    if (new_h, new_w) == (h, w):
        return image
    return np.asarray(Image.fromarray(image, mode="RGB").resize((new_w, new_h), resample=Image.BICUBIC))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """[H, W, C] with H, W >= size -> [size, size, C]."""
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


def _as_frames(frames) -> np.ndarray:
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[None]
    if x.ndim == 4 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)  # grayscale -> RGB (PIL "L" -> "RGB" replicates the channel)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 RGB [F, H, W, 3] (or one [H, W, 3] frame), got shape {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB (0..255), got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError("no frames to preprocess (got 0)")
    if min(x.shape[1:3]) < 1:
        raise ValueError(f"frames have an empty spatial size {x.shape[1:3]}")
    return x


def normalize_table(mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """float32 [3, 256]: the rescaled + normalized value of every uint8 level per channel.

    Computed exactly as transformers does elementwise (float64 rescale, float32 cast, float32
    ``(x - mean) / std``), so a table lookup gives bit-identical results.
    """
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return ((levels[None, :] - mean32[:, None]) / std32[:, None]).astype(np.float32)


def _run_frames(n: int, one, progress: bool, threads: int | None, desc: str) -> None:
    """Call ``one(i)`` for i < n on ``threads`` threads (default min(8, CPUs); PIL releases the GIL)."""
    workers = threads or min(8, os.cpu_count() or 1)
    bar = tqdm(total=n, desc=desc, unit="frame", disable=not progress, leave=False)
    if workers <= 1 or n == 1:
        for i in range(n):
            one(i)
            bar.update(1)
    else:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(one, range(n)):
                bar.update(1)
    bar.close()


def resize_crop_frames(frames, size: int = CLIP_SIZE, progress: bool = False, threads: int | None = None) -> np.ndarray:
    """uint8 RGB frames [F, H, W, 3] (or one [H, W, 3]) -> uint8 [F, size, size, 3] (steps 1-2, threaded).

    Idempotent: frames that are already ``size`` x ``size`` are returned as they are (not copied).
    """
    x = _as_frames(frames)
    if x.shape[1:3] == (size, size):
        return x
    out = np.empty((x.shape[0], size, size, 3), np.uint8)

    def one(i: int) -> None:
        out[i] = center_crop(resize_shortest_edge(x[i], size), size)

    _run_frames(x.shape[0], one, progress, threads, "resize")
    return out


def preprocess_frames(frames, size: int = CLIP_SIZE, mean=CLIP_MEAN, std=CLIP_STD,
                      progress: bool = False, threads: int | None = None) -> np.ndarray:
    """uint8 RGB frames [F, H, W, 3] (or one [H, W, 3]) -> float32 pixel values [F, 3, size, size] (host).

    The PIL resizes run on ``threads`` threads (default: min(8, CPUs); PIL releases the GIL).
    """
    x = _as_frames(frames)
    table = normalize_table(mean, std)
    out = np.empty((x.shape[0], 3, size, size), np.float32)

    def one(i: int) -> None:
        crop = center_crop(resize_shortest_edge(x[i], size), size)
        for c in range(3):
            out[i, c] = table[c][crop[..., c]]

    _run_frames(x.shape[0], one, progress, threads, "preprocess")
    return out


def normalize_frames(frames, dtype=None, mean=CLIP_MEAN, std=CLIP_STD):
    """uint8 [..., S, S, 3] (jax or numpy) -> normalized [..., 3, S, S] in ``dtype`` (default float32), traceable.

    Steps 3-5 as a gather from :func:`normalize_table`: in float32 it is bit-identical to
    :func:`preprocess_frames`; other dtypes equal its float32 result cast to ``dtype``.
    """
    import jax.numpy as jnp

    if frames.dtype != jnp.uint8 or frames.shape[-1] != 3:
        raise ValueError(f"normalize_frames needs uint8 [..., S, S, 3] frames, got {frames.dtype} {frames.shape}")
    table = jnp.asarray(normalize_table(mean, std)).astype(dtype or jnp.float32).reshape(-1)  # [3 * 256]
    chw = jnp.moveaxis(jnp.asarray(frames), -1, -3).astype(jnp.int32)  # [..., 3, S, S]
    offsets = (jnp.arange(3, dtype=jnp.int32) * 256)[:, None, None]
    return jnp.take(table, chw + offsets, axis=0, mode="clip")
