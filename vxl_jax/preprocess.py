"""CLIP image preprocessing (openai/clip-vit-large-patch14-336 settings), PIL + numpy (spec section 5).

Bit-for-bit the same as transformers' ``CLIPImageProcessor`` (PIL backend) for uint8 RGB input:
1. resize so the shortest edge is ``size`` with PIL bicubic; the long edge is ``int(size * long / short)``
   (truncated, as transformers' ``get_resize_output_image_size``);
2. center crop ``size`` x ``size`` at offsets ``(h - size) // 2``, ``(w - size) // 2``;
3. rescale: ``uint8 -> float64 * (1/255) -> float32``;
4. normalize in float32: ``(x - mean) / std`` (3 and 4 are done as an exact 256-entry table lookup);
5. channels first.
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


def preprocess_frames(frames, size: int = CLIP_SIZE, mean=CLIP_MEAN, std=CLIP_STD,
                      progress: bool = False, threads: int | None = None) -> np.ndarray:
    """uint8 RGB frames [F, H, W, 3] (or one [H, W, 3]) -> float32 pixel values [F, 3, size, size].

    The PIL resizes run on ``threads`` threads (default: min(8, CPUs); PIL releases the GIL).
    """
    x = _as_frames(frames)
    table = normalize_table(mean, std)
    out = np.empty((x.shape[0], 3, size, size), np.float32)

    def one(i: int) -> None:
        crop = center_crop(resize_shortest_edge(x[i], size), size)
        for c in range(3):
            out[i, c] = table[c][crop[..., c]]

    n = threads or min(8, os.cpu_count() or 1)
    bar = tqdm(total=x.shape[0], desc="preprocess", unit="frame", disable=not progress, leave=False)
    if n <= 1 or x.shape[0] == 1:
        for i in range(x.shape[0]):
            one(i)
            bar.update(1)
    else:
        with ThreadPoolExecutor(n) as pool:
            for _ in pool.map(one, range(x.shape[0])):
                bar.update(1)
    bar.close()
    return out
