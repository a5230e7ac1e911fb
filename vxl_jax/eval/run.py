"""Run a multiple-choice benchmark: read each video once, encode it once, answer all its questions from
the saved video memory, and append one result line per question (resumable, see ``results.py``).

    from vxl_jax.eval import run_benchmark, read_benchmark
    items = read_benchmark("videomme", "videomme/test.json")
    summary = run_benchmark(vx, items, "videos/", "out/", style="videomme", frames=128)

Scoring (``scoring``):
* ``generate`` (default, as the reference evaluations): greedy answer (the checkpoint's repetition
  penalty applies, as in the original), letter read by :func:`vxl_jax.eval.choice.parse_letter`;
* ``loglik``: the option whose letter is most likely as the next token after the same prompt;
* ``loglik-text``: the option whose text has the highest summed log-likelihood after the prompt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from vxl_jax.eval.clips import read_item_frames
from vxl_jax.eval.choice import LETTERS, STYLES, letter_logprobs, parse_letter, prompt_ids, text_logprobs
from vxl_jax.eval.readers import Item, find_video
from vxl_jax.eval.results import ResultsFile, summarize, write_json_atomic
from vxl_jax.eval.scores import paper_scores
from vxl_jax.media.video import VideoStream

SCORINGS = ("generate", "loglik", "loglik-text")
DEFAULT_FRAMES = 128
_DECODE_BATCH = 32


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What a results folder was produced with (a rerun must match it to resume)."""

    benchmark: str
    scoring: str = "generate"
    frames: int | None = None
    fps: float | None = None
    ratio: object = None
    max_new_tokens: int = 32
    keep_memory: bool = True
    model: str = "embedded tiny model"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["ratio"] = list(self.ratio) if isinstance(self.ratio, (list, tuple)) else self.ratio
        return d


def open_frames(path: str, size: int, frames: int | None, fps: float | None) -> VideoStream:
    """The frames a question's video is read with, as ``infer.py`` reads them (:class:`VideoStream`, i.e.
    :func:`vxl_jax.media.video.sample_indices`): ``frames`` uniform frames (default 128), or ``fps`` frames per
    second capped at ``frames`` (over the cap: ``frames`` uniform frames). ``.indices`` holds the choice."""
    if fps is None:
        return VideoStream(path, num_frames=frames or DEFAULT_FRAMES, size=size, batch=_DECODE_BATCH)
    return VideoStream(path, fps=fps, size=size, batch=_DECODE_BATCH, max_frames=frames)


def read_frames(path: str, size: int, frames: int | None, fps: float | None) -> np.ndarray:
    """uint8 [F, size, size, 3] of :func:`open_frames` (a video shorter than ``frames``: all its frames)."""
    stream = open_frames(path, size, frames, fps)
    out = np.empty((len(stream), size, size, 3), np.uint8)
    start = 0
    for part in stream:
        out[start:start + len(part)] = part
        start += len(part)
    return out


def group_by_video(items: Sequence[Item]) -> list[list[Item]]:
    """Items grouped by video (and clip of it), groups in order of first appearance, items in file order within a
    group."""
    groups: dict = {}
    for it in items:
        groups.setdefault((it.video, it.clip), []).append(it)
    return list(groups.values())


def encode_video(vx, frames: np.ndarray, style, first: Item, ratio=None, keep_memory: bool = True):
    """Prefill the video once -> its reusable memory (prefix + beacons) and the prefix ids it starts with."""
    ids, after = prompt_ids(style, first.question, first.options, vx.tokenizer)
    res = vx.prefill(ids, frames, ratio=ratio, keep_memory=keep_memory)
    return res.video_memory, ids[:len(ids) - len(after) - 1]


def answer_item(vx, memory, prefix: np.ndarray, item: Item, style, scoring: str, max_new_tokens: int) -> dict:
    """Ask one question of a video memory -> {prediction, response | scores}."""
    ids, after = prompt_ids(style, item.question, item.options, vx.tokenizer)
    if not np.array_equal(ids[:len(prefix)], prefix):
        raise ValueError("the prompt before the video differs between questions of one style")
    if scoring == "generate":
        out = vx.generate(after, None, memory=memory, max_new_tokens=max_new_tokens, do_sample=False)
        text = vx.tokenizer.decode([int(i) for i in out], skip_special_tokens=True).strip()
        return {"prediction": parse_letter(text, item.options), "response": text}
    if scoring == "loglik":
        scores = letter_logprobs(vx, memory, after, len(item.options))
        return {"prediction": LETTERS[int(np.argmax(scores))], "scores": [round(float(s), 6) for s in scores]}
    if scoring == "loglik-text":
        sums, counts = text_logprobs(vx, memory, after, item.options)
        return {"prediction": LETTERS[int(np.argmax(sums))], "scores": [round(float(s), 6) for s in sums],
                "tokens": [int(c) for c in counts]}
    raise ValueError(f"unknown scoring {scoring!r}; choose one of {', '.join(SCORINGS)}")


def check_videos(videos_dir, items: Sequence[Item]) -> None:
    """Before the first item: every video the items need is there (else one line: how many are missing, of how
    many, and the first few), so a run never stops partway through a benchmark for a missing file."""
    missing = []
    for group in group_by_video(items):
        try:
            find_video(videos_dir, group[0])
        except FileNotFoundError:
            missing.append(group[0].video)
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing) - 5} more)" if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} of {len(group_by_video(items))} videos not found under {videos_dir}: "
                                f"{shown}; nothing was scored")


def check_settings(out_dir: str, settings: RunSettings) -> None:
    """Write ``run.json`` on the first run; refuse to resume a folder produced with other settings."""
    path = os.path.join(out_dir, "run.json")
    new = settings.to_json()
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        if old != new:
            diff = {k: (old.get(k), new.get(k)) for k in new if old.get(k) != new.get(k)}
            raise ValueError(f"{out_dir} holds results made with other settings {diff} (was, now); use another "
                             f"--out or the same settings to resume")
        return
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(path, new)


def run_benchmark(vx, items: Sequence[Item], videos_dir, out_dir, *, settings: RunSettings, style: str | None = None,
                  progress: bool = True, after_item: Callable[[dict], None] | None = None) -> dict:
    """Score every item not already in ``out_dir/results.jsonl``; write ``summary.json``; return the summary.

    ``after_item(record)`` is called after each record is safely written (tests use it to interrupt)."""
    out_dir = os.fspath(out_dir)
    if settings.scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {settings.scoring!r}; choose one of {', '.join(SCORINGS)}")
    style = STYLES[style or settings.benchmark]
    results = ResultsFile(os.path.join(out_dir, "results.jsonl"))
    known = {it.id for it in items}
    stray = [r["id"] for r in results.records if r["id"] not in known]
    if stray:
        raise ValueError(f"{out_dir}/results.jsonl has items not in these annotations (e.g. {stray[0]!r})")
    todo = [it for it in items if it.id not in results.done]
    check_videos(videos_dir, todo)
    check_settings(out_dir, settings)
    size = vx.cfg.vision.image_size
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=settings.benchmark, unit="q",
               disable=not progress, dynamic_ncols=True)
    try:
        for group in group_by_video(todo):
            t0 = time.perf_counter()
            path = find_video(videos_dir, group[0])
            count = group[0].num_frames or settings.frames
            frames = read_item_frames(path, group[0], size, count, settings.fps, DEFAULT_FRAMES)
            frames = read_frames(path, size, count, settings.fps) if frames is None else frames
            t1 = time.perf_counter()
            memory, prefix = encode_video(vx, frames, style, group[0], settings.ratio, settings.keep_memory)
            t2 = time.perf_counter()
            for it in group:
                t = time.perf_counter()
                ans = answer_item(vx, memory, prefix, it, style, settings.scoring, settings.max_new_tokens)
                answer_s = time.perf_counter() - t
                record = {"id": it.id, "video": it.video, "answer": it.answer, "correct": ans["prediction"] == it.answer,
                          "groups": it.groups, "frames": int(len(frames)), **ans,
                          "timing": {"read_s": round(t1 - t0, 4), "encode_s": round(t2 - t1, 4),
                                     "answer_s": round(answer_s, 4),
                                     "item_s": round((t2 - t0) / len(group) + answer_s, 4)}}
                if it.meta:
                    record["meta"] = it.meta
                results.append(record)
                bar.update(1)
                bar.set_postfix(acc=f"{sum(r['correct'] for r in results.records) / len(results.records):.3f}")
                if after_item is not None:
                    after_item(record)
    finally:
        bar.close()
        summary = summarize(results.records, total=len(items))
        summary["settings"] = settings.to_json()
        summary["paper"] = paper_scores(settings.benchmark, results.records)
        write_json_atomic(os.path.join(out_dir, "summary.json"), summary)
    return summary
