"""A small self-made video QA dataset (no download): "what colour was the flash?".

Each video is ``seconds`` long at ``fps``, mostly random grey frames; during one second (the
"needle", placed in the first ``needle_within`` seconds, i.e. the first beacon window at 1 fps
sampling) the whole frame is one of :data:`COLOURS`. The question asks that colour; the answer is
its name (whose first tokens are distinct in the tiny tokenizer). Videos are written with
:func:`vxl_jax.media.video.write_video`.

    paths = make_colour_dataset("runs/colour_data", n_train=16, n_eval=8)
    # {"train": ".../train.json", "eval": ".../eval.json", "video_folder": ".../videos"}

Layout: ``<root>/videos/*.mp4``, ``<root>/images/*.png``, ``<root>/train.json``, ``<root>/eval.json``.
The folder is a cache: an existing complete dataset with the same parameters is reused.
"""

from __future__ import annotations

import json
import os

import numpy as np

from vxl_jax.media.video import write_video

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 50, 220), "yellow": (230, 220, 30)}
QUESTION = "What colour was the flash in the video?"


def colour_frames(colour: str, needle_second: int, seconds: int, fps: int, size=(64, 48), seed: int = 0) -> np.ndarray:
    """uint8 [seconds * fps, H, W, 3]: random grey frames, frames of ``needle_second`` filled with the colour."""
    w, h = size
    rng = np.random.default_rng(seed)
    grey = rng.integers(40, 200, size=(seconds * fps, 1, 1, 1))
    frames = np.broadcast_to(grey, (seconds * fps, h, w, 3)).astype(np.uint8).copy()
    frames[needle_second * fps:(needle_second + 1) * fps] = COLOURS[colour]
    return frames


def colour_record(rid: str, video: str, colour: str) -> dict:
    return {"id": rid, "video": video, "conversations": [
        {"from": "human", "value": "<image>\n" + QUESTION}, {"from": "gpt", "value": colour}]}


TEXT_RECORDS = [
    ("text-0", "What colour is the sky on a clear day?", "blue"),
    ("text-1", "What colour is grass?", "green"),
]


def make_colour_dataset(root, n_train: int = 16, n_eval: int = 8, seconds: tuple[int, int] = (12, 20), fps: int = 4,
                        needle_within: int = 10, size=(64, 48), seed: int = 0, text_only: bool = True,
                        image: bool = True, progress: bool = False) -> dict:
    """Write (or reuse) the dataset under ``root``; returns paths {train, eval, video_folder, image_folder}."""
    root = os.path.abspath(os.fspath(root))
    params = dict(n_train=n_train, n_eval=n_eval, seconds=list(seconds), fps=fps, needle_within=needle_within,
                  size=list(size), seed=seed, text_only=text_only, image=image, version=1)
    out = {"train": os.path.join(root, "train.json"), "eval": os.path.join(root, "eval.json"),
           "video_folder": os.path.join(root, "videos"), "image_folder": os.path.join(root, "images")}
    stamp = os.path.join(root, "dataset.json")
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == params and all(os.path.exists(p) for p in out.values()):
                return out
    os.makedirs(out["video_folder"], exist_ok=True)
    os.makedirs(out["image_folder"], exist_ok=True)
    rng = np.random.default_rng(seed)
    names = sorted(COLOURS)
    splits: dict[str, list] = {"train": [], "eval": []}
    from tqdm.auto import tqdm

    jobs = [("train", i) for i in range(n_train)] + [("eval", i) for i in range(n_eval)]
    for split, i in tqdm(jobs, desc="synthetic videos", disable=not progress, leave=False):
        colour = names[int(rng.integers(len(names)))]
        secs = int(rng.integers(seconds[0], seconds[1] + 1))
        needle = int(rng.integers(0, min(needle_within, secs)))
        rel = f"{split}_{i:04d}.mp4"
        write_video(os.path.join(out["video_folder"], rel),
                    colour_frames(colour, needle, secs, fps, size, seed=int(rng.integers(2 ** 31))), fps)
        splits[split].append(colour_record(f"{split}-{i}", rel, colour))
    if text_only:
        for rid, q, a in TEXT_RECORDS:
            splits["train"].append({"id": rid, "conversations": [{"from": "human", "value": q},
                                                                 {"from": "gpt", "value": a}]})
    if image:
        from PIL import Image

        Image.fromarray(colour_frames("red", 0, 1, 1, size)[0]).save(os.path.join(out["image_folder"], "red.png"))
        splits["train"].append({"id": "image-0", "image": "red.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is this picture?"}, {"from": "gpt", "value": "red"}]})
    for split in splits:
        with open(out[split], "w") as f:
            json.dump(splits[split], f, indent=1)
    with open(stamp, "w") as f:
        json.dump(params, f)
    return out
