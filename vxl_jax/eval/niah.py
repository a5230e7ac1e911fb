"""Needle in a video haystack: build the test (haystack length x needle depth grid) as videos + annotations.

    python -m vxl_jax.eval.niah --out niah --lengths 16,64,256 --depths 0,25,50,75,100 \\
        [--haystack long.mp4 ...] [--needles needles.json]
    python -m vxl_jax.eval --benchmark niah --annotations niah/niah.json --videos niah/videos --out results

Every item is a video of exactly ``length`` frames (one frame per second): ``length - n`` frames sampled
uniformly from a haystack video (or synthetic grey noise), with the ``n`` needle frames inserted at frame
``round(depth / 100 * (length - n))``; so depth 0 % puts the needle first and 100 % last. The question asks
about the needle with lettered options. The annotation (``niah.json``) records each item's ``length``,
``depth``, ``num_frames`` (read them all) and ``needle_frames`` (the frame indices the needle occupies).

Needles (``--needles`` JSON list): ``{"image": "x.png"}`` or ``{"video": "clip.mp4", "frames": 4}``, with
``question``, ``options`` (list) and ``answer`` (a letter or the option's text), paths relative to the JSON.
Without ``--needles``: four synthetic needles, one whole frame of blue / green / red / yellow, asked
"What colour was the flash in the video?".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence

import numpy as np

from vxl_jax.data.synthetic import COLOURS
from vxl_jax.eval.choice import LETTERS
from vxl_jax.media.video import load_video, write_video
from vxl_jax.runtime.atomic_io import write_text

COLOUR_QUESTION = "What colour was the flash in the video?"
COLOUR_OPTIONS = ["blue", "green", "red", "yellow"]
FPS = 1  # frames per second of the written videos (one sampled frame per second)
DEFAULT_SIZE = (64, 48)  # (width, height) of synthetic haystacks


@dataclasses.dataclass
class Needle:
    """uint8 frames [n, H, W, 3] and the question about them (``answer``: a letter)."""

    name: str
    frames: np.ndarray
    question: str
    options: list
    answer: str


def colour_needles(size=DEFAULT_SIZE, frames: int = 1) -> list[Needle]:
    """One needle per colour: ``frames`` frames filled with it (the colours of ``vxl_jax.data.synthetic``)."""
    w, h = size
    out = []
    for i, name in enumerate(COLOUR_OPTIONS):
        frame = np.broadcast_to(np.asarray(COLOURS[name], np.uint8), (frames, h, w, 3)).copy()
        out.append(Needle(name, frame, COLOUR_QUESTION, list(COLOUR_OPTIONS), "ABCD"[i]))
    return out


def _answer_letter(answer, options: Sequence[str], where: str) -> str:
    a = str(answer).strip()
    if len(a) == 1 and a.upper() in LETTERS[:len(options)]:
        return a.upper()
    if a in [str(o) for o in options]:
        return LETTERS[[str(o) for o in options].index(a)]
    raise ValueError(f"{where}: answer {answer!r} is neither a letter of the {len(options)} options nor one of them")


def load_needles(path) -> list[Needle]:
    """Needles from a JSON list (see the module docstring); image / clip paths are relative to the file."""
    from PIL import Image

    base = os.path.dirname(os.path.abspath(path))
    with open(path) as f:
        entries = json.load(f)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty JSON list of needles")
    out = []
    for i, e in enumerate(entries):
        where = f"{path} needle {i}"
        for key in ("question", "options", "answer"):
            if key not in e:
                raise ValueError(f"{where}: missing {key!r}")
        if "image" in e:
            with Image.open(os.path.join(base, e["image"])) as im:
                frames = np.asarray(im.convert("RGB"))[None]
        elif "video" in e:
            frames, _ = load_video(os.path.join(base, e["video"]), int(e.get("frames", 4)))
        else:
            raise ValueError(f"{where}: give 'image' or 'video'")
        name = str(e.get("name", os.path.splitext(os.path.basename(e.get("image") or e["video"]))[0]))
        out.append(Needle(name, frames, str(e["question"]), [str(o) for o in e["options"]],
                          _answer_letter(e["answer"], e["options"], where)))
    return out


def _fit(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize uint8 frames [n, H, W, 3] to [n, h, w, 3] (PIL bilinear) when their size differs."""
    if frames.shape[1:3] == (h, w):
        return frames
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames])


def noise_haystack(length: int, size=DEFAULT_SIZE, seed: int = 0) -> np.ndarray:
    """Synthetic haystack: ``length`` frames, each one random grey level (uint8 [length, H, W, 3])."""
    w, h = size
    grey = np.random.default_rng(seed).integers(40, 200, size=(length, 1, 1, 1))
    return np.broadcast_to(grey, (length, h, w, 3)).astype(np.uint8)


def needle_start(length: int, depth: float, n_needle: int) -> int:
    """First frame of a needle of ``n_needle`` frames at ``depth`` percent of a ``length``-frame video."""
    if not 0 <= depth <= 100:
        raise ValueError(f"depth must be a percentage in [0, 100], got {depth}")
    if n_needle >= length:
        raise ValueError(f"a {n_needle}-frame needle does not fit a {length}-frame video with haystack around it")
    return int(round(depth / 100 * (length - n_needle)))


def insert_needle(haystack: np.ndarray, needle: np.ndarray, depth: float) -> tuple[np.ndarray, list[int]]:
    """Haystack frames [m, H, W, 3] + needle frames [n, ...] at ``depth`` % -> ([m + n, H, W, 3], needle indices)."""
    n = len(needle)
    start = needle_start(len(haystack) + n, depth, n)
    needle = _fit(needle, *haystack.shape[1:3])
    return np.concatenate([haystack[:start], needle, haystack[start:]]), list(range(start, start + n))


def make_niah(out_dir, lengths: Sequence[int], depths: Sequence[float], haystacks: Sequence[str] = (),
              needles: Sequence[Needle] | None = None, size=DEFAULT_SIZE, seed: int = 0, progress: bool = False) -> str:
    """Write the grid's videos under ``out_dir/videos`` and ``out_dir/niah.json``; returns the JSON's path.

    One item per (length, depth, needle). ``haystacks``: video paths (item k uses haystack k mod count,
    sampled uniformly to ``length - n`` frames); empty: seeded grey noise of ``size`` (width, height)."""
    from tqdm.auto import tqdm

    needles = list(needles) if needles is not None else colour_needles(size)
    lengths, depths = [int(x) for x in lengths], [float(d) for d in depths]
    if not lengths or not depths or not needles:
        raise ValueError("make_niah needs at least one length, one depth and one needle")
    videos = os.path.join(out_dir, "videos")
    os.makedirs(videos, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    jobs = [(L, d, nd) for L in lengths for d in depths for nd in needles]
    for k, (length, depth, needle) in enumerate(tqdm(jobs, desc="niah videos", disable=not progress, leave=False)):
        m = length - len(needle.frames)
        needle_start(length, depth, len(needle.frames))  # checks depth and fit
        if haystacks:
            hay, _ = load_video(haystacks[k % len(haystacks)], m)
            if len(hay) < m:
                raise ValueError(f"haystack {haystacks[k % len(haystacks)]} has {len(hay)} frames, {m} needed")
            hay = hay[:, : hay.shape[1] // 2 * 2, : hay.shape[2] // 2 * 2]  # even size for the encoder
        else:
            hay = noise_haystack(m, size, seed=int(rng.integers(2 ** 31)))
        frames, where = insert_needle(hay, needle.frames, depth)
        depth_tag = f"{depth:g}".replace(".", "p")
        rid = f"L{length}_d{depth_tag}_{needle.name}"
        rel = f"{rid}.mp4"
        write_video(os.path.join(videos, rel), frames, FPS)
        items.append({"id": rid, "video": rel, "question": needle.question, "options": list(needle.options),
                      "answer": needle.answer, "length": length, "depth": depth, "num_frames": length,
                      "needle": needle.name, "needle_frames": where})
    path = os.path.join(out_dir, "niah.json")
    write_text(path, json.dumps({"benchmark": "niah", "lengths": lengths, "depths": depths, "items": items}, indent=1),
               what="needle grid")
    return path


def _numbers(text: str, kind=float) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: expected comma-separated numbers, got {text!r}") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vxl_jax.eval.niah", description="Write a needle-in-a-video-haystack test.")
    p.add_argument("--out", required=True, help="folder for niah.json and videos/")
    p.add_argument("--lengths", default="16,32,64,128", help="haystack lengths in frames, comma separated")
    p.add_argument("--depths", default="0,25,50,75,100", help="needle depths in percent, comma separated")
    p.add_argument("--haystack", nargs="*", default=[], help="haystack video(s); default: synthetic grey noise")
    p.add_argument("--needles", default=None, help="needles JSON (default: four synthetic colour flashes)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        needles = load_needles(a.needles) if a.needles else None
        path = make_niah(a.out, _numbers(a.lengths, int), _numbers(a.depths), a.haystack, needles, seed=a.seed,
                         progress=True)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
