"""Benchmark annotation readers: the released layouts -> a list of :class:`Item` (one question each).

* **MLVU** (dev): one JSON list per task (``1_plotQA.json``, ``2_needle.json``, ..., under ``json/``);
  records ``video``, ``duration``, ``question``, ``candidates``, ``answer`` (the option's text),
  ``question_type``. Give one file or the folder. Videos: ``VIDEOS/<video>``, ``VIDEOS/<file stem>/<video>``
  or ``VIDEOS/video/<file stem>/<video>`` (the release's ``MLVU/video/1_plotQA/..``).
* **Video-MME**: the released table (``videomme/test-*.parquet``, needs pyarrow; or the same rows as
  JSON / JSONL): ``video_id``, ``duration`` (short / medium / long), ``domain``, ``sub_category``,
  ``url``, ``videoID``, ``question_id``, ``task_type``, ``question``, ``options`` (``["A. ..", ..]``),
  ``answer`` (a letter). Videos: ``VIDEOS/<videoID>.mp4`` (or .MP4 / .mkv).
* **LongVideoBench**: ``lvb_val.json`` (``id``, ``video_id``, ``video_path``, ``question``, ``candidates``,
  ``correct_choice`` (index), ``duration_group``, ``question_category``, ``duration``, ...); the
  lmms-eval table's ``option0..option4`` ("N/A" = absent) are read too. Videos: ``VIDEOS/<video_path>``
  or ``VIDEOS/<video_id>.mp4``.
* **niah**: ``niah.json`` written by :func:`vxl_jax.eval.niah.make_niah`.
* **VNBench**, **MVBench**, **NExT-QA**: :mod:`vxl_jax.eval.readers_short`.

Every benchmark by name: :mod:`vxl_jax.eval.benchmarks`.

No reader downloads anything; a missing or malformed field is a ``ValueError`` naming the record.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re

from vxl_jax.eval.choice import LETTERS

VIDEO_EXTENSIONS = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")


@dataclasses.dataclass
class Item:
    """One multiple-choice question about one video."""

    id: str
    video: str  # relative to the videos folder (or absolute)
    question: str
    options: list  # option texts, without their letters
    answer: str  # the correct letter
    groups: dict = dataclasses.field(default_factory=dict)  # summary groups: task, duration, ...
    num_frames: int | None = None  # frames to read (None: the run's --frames / --fps)
    meta: dict = dataclasses.field(default_factory=dict)  # anything else worth keeping in the results
    video_candidates: list = dataclasses.field(default_factory=list)  # other relative paths to try
    clip: tuple | None = None  # (start, end) seconds of the video the question is about (MVBench's bounds)
    frame_fps: float | None = None  # the video is a folder of frames at this rate (MVBench's episodic reasoning)
    clip_paths: list = dataclasses.field(default_factory=list)  # where ``clip`` applies (else: a pre-cut copy)


def _load_rows(path) -> list:
    """JSON list, JSON object with an ``items`` / ``data`` list, JSONL, or a parquet table (pyarrow)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading parquet needs pyarrow (pip install 'vxl-jax[eval]'), or give the rows "
                             f"as JSON / JSONL") from None
        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: neither JSON nor JSONL ({e})") from None
    if isinstance(data, dict):
        for key in ("items", "data", "annotations"):
            if isinstance(data.get(key), list):
                return data[key]
        raise ValueError(f"{path}: a JSON object without an 'items' list")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of records")
    return data


def _need(row: dict, keys, where: str):
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(map(repr, missing))} (has {sorted(row)})")


def _options(opts, where: str) -> list:
    if not isinstance(opts, (list, tuple)) or not opts:
        raise ValueError(f"{where}: options must be a non-empty list, got {opts!r}")
    if len(opts) > len(LETTERS):
        raise ValueError(f"{where}: {len(opts)} options, at most {len(LETTERS)} are supported")
    return [str(o) for o in opts]


def _candidates(row: dict, where: str) -> list:
    """A record with ``video``, ``question``, ``candidates`` and an ``answer`` that is one of them (MLVU's and
    MVBench's layout) -> its options."""
    _need(row, ("video", "question", "candidates", "answer"), where)
    options = _options(row["candidates"], where)
    if str(row["answer"]) not in options:
        raise ValueError(f"{where}: answer {row['answer']!r} is not one of the candidates {options}")
    return options


# ---------------------------------------------------------------------------- MLVU

MLVU_TASK = re.compile(r"^\d+_(.+)$")  # "1_plotQA" -> "plotQA"


def read_mlvu(path) -> list[Item]:
    """MLVU dev JSON (one task file, or the folder of them)."""
    path = os.fspath(path)
    files = sorted(glob.glob(os.path.join(path, "*.json"))) if os.path.isdir(path) else [path]
    if not files:
        raise FileNotFoundError(f"no MLVU task JSON files in {path}")
    items = []
    for file in files:
        stem = os.path.splitext(os.path.basename(file))[0]
        m = MLVU_TASK.match(stem)
        task_dir = stem
        for i, row in enumerate(_load_rows(file)):
            where = f"{file} record {i}"
            options = _candidates(row, where)
            task = str(row.get("question_type") or (m.group(1) if m else stem))
            video = str(row["video"])
            items.append(Item(
                id=f"{stem}/{i}", video=video, question=str(row["question"]), options=options,
                answer=LETTERS[options.index(str(row["answer"]))], groups={"task": task},
                meta={"duration": row.get("duration")},
                video_candidates=[os.path.join(task_dir, video), os.path.join("video", task_dir, video)]))
    return items


# ---------------------------------------------------------------------------- Video-MME

_LETTERED = re.compile(r"^\s*\(?([A-J])[.):]\s*(.*)$", re.S)


def _strip_letters(options: list, where: str) -> list:
    """``["A. x", "B. y"]`` -> ``["x", "y"]`` (checks the letters run A, B, ...)."""
    out = []
    for i, o in enumerate(options):
        m = _LETTERED.match(o)
        if not m or m.group(1) != LETTERS[i]:
            raise ValueError(f"{where}: option {i} {o!r} does not start with '{LETTERS[i]}.'")
        out.append(m.group(2).strip())
    return out


def read_videomme(path) -> list[Item]:
    """Video-MME rows (parquet / JSON / JSONL)."""
    items = []
    for i, row in enumerate(_load_rows(path)):
        where = f"{path} row {i}"
        _need(row, ("videoID", "question_id", "question", "options", "answer"), where)
        options = _strip_letters(_options(list(row["options"]), where), where)
        answer = str(row["answer"]).strip().upper()
        if answer not in LETTERS[:len(options)]:
            raise ValueError(f"{where}: answer {row['answer']!r} is not a letter of the {len(options)} options")
        vid = str(row["videoID"])
        items.append(Item(
            id=str(row["question_id"]), video=vid + ".mp4", question=str(row["question"]), options=options,
            answer=answer, groups={k: str(row[k]) for k in ("duration", "domain", "task_type") if k in row},
            meta={k: row[k] for k in ("video_id", "sub_category", "url") if k in row},
            video_candidates=[vid + ext for ext in VIDEO_EXTENSIONS[1:]]))
    return items


# ---------------------------------------------------------------------------- LongVideoBench

def read_longvideobench(path) -> list[Item]:
    """LongVideoBench ``lvb_val.json`` (``candidates`` + ``correct_choice``) or lmms-eval rows (``option0..4``)."""
    items = []
    for i, row in enumerate(_load_rows(path)):
        where = f"{path} record {i}"
        _need(row, ("question", "correct_choice"), where)
        if "candidates" in row:
            options = _options(row["candidates"], where)
        else:
            options = _options([row[f"option{k}"] for k in range(len(LETTERS))
                                if row.get(f"option{k}") not in (None, "N/A")], where)
        choice = row["correct_choice"]
        if not isinstance(choice, int) or not 0 <= choice < len(options):
            raise ValueError(f"{where}: correct_choice {choice!r} is not an index of the {len(options)} candidates")
        if "video_path" not in row and "video_id" not in row:
            raise ValueError(f"{where}: no 'video_path' or 'video_id'")
        video = str(row.get("video_path") or f"{row['video_id']}.mp4")
        rid = str(row.get("id") or f"{row.get('video_id', 'video')}_{i}")
        groups = {k: str(row[k]) for k in ("duration_group", "question_category") if k in row}
        items.append(Item(
            id=rid, video=video, question=str(row["question"]), options=options, answer=LETTERS[choice],
            groups=groups, meta={k: row[k] for k in ("video_id", "duration", "topic_category", "level", "position")
                                 if k in row},
            video_candidates=[f"{row['video_id']}{ext}" for ext in VIDEO_EXTENSIONS] if "video_id" in row else []))
    return items


# ---------------------------------------------------------------------------- needle in a haystack

def read_niah(path) -> list[Item]:
    """The needle test written by :func:`vxl_jax.eval.niah.make_niah`."""
    items = []
    for i, row in enumerate(_load_rows(path)):
        where = f"{path} item {i}"
        _need(row, ("id", "video", "question", "options", "answer", "length", "depth"), where)
        options = _options(row["options"], where)
        if row["answer"] not in LETTERS[:len(options)]:
            raise ValueError(f"{where}: answer {row['answer']!r} is not a letter of the {len(options)} options")
        items.append(Item(
            id=str(row["id"]), video=str(row["video"]), question=str(row["question"]), options=options,
            answer=row["answer"], groups={"length": int(row["length"]), "depth": float(row["depth"])},
            num_frames=int(row.get("num_frames") or row["length"]),
            meta={k: row[k] for k in ("needle", "needle_frames") if k in row}))
    return items


def find_video(videos_dir, item: Item) -> str:
    """The item's video file (or frame folder, for an item with ``frame_fps``): ``videos_dir/<video>`` or one of
    its other known places (FileNotFoundError listing the paths tried)."""
    tried = []
    for rel in [item.video, *item.video_candidates]:
        p = rel if os.path.isabs(rel) else os.path.join(os.fspath(videos_dir), rel)
        if os.path.isfile(p) or (item.frame_fps and os.path.isdir(p)):
            return p
        tried.append(p)
    raise FileNotFoundError(f"video for item {item.id} not found; tried: {', '.join(tried)}")
