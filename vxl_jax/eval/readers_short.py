"""Readers for VNBench, MVBench and NExT-QA in the layouts their releases publish (-> :class:`Item` lists).

* **VNBench** (Zhao et al. 2024, github.com/joez17/VideoNIAH; annotations huggingface.co/datasets/Joez1717/VNBench,
  videos from the release's Google-Drive archive): ``VNBench-main-4try.json``, a JSON list of records ``video``
  (a path whose last part is the file name), ``question``, ``options`` (option texts), ``gt`` (the answer's text;
  an index 0-3 is accepted too, as the release's ``eval.py`` does), ``type`` (``ret_insert1``, ``ret_insert2``,
  ``ret_edit1``, ``ord_*``, ``cnt_*``), ``try`` (0-3: the same video asked four times with rotated options),
  ``needle_time``, ``length``. Ids follow Video-XL's ``eval/eval_vnbench.py``: ``<video stem>_<k>`` (k counts the
  stem's records). Groups: ``type`` and ``task`` (retrieval / ordering / counting). The paper's score is circular
  (:mod:`vxl_jax.eval.scores`): a video counts when all its tries are right. Videos: ``VIDEOS/<file name>`` or
  ``VIDEOS/VNBench_new/<file name>`` or ``VIDEOS/<video as written>``.
* **MVBench** (Li et al. 2024, huggingface.co/datasets/OpenGVLab/MVBench): ``json/<task>.json`` (20 files, e.g.
  ``action_sequence.json``), records ``video``, ``question``, ``candidates``, ``answer`` (the option's text) and,
  for the bounded tasks, ``start`` / ``end`` (seconds). Videos under ``video/<folder>/`` as the release's
  ``data_list`` names them (:data:`MVBENCH_TASKS`: ``star/Charades_v1_480``, ``clevrer/video_validation``, ...;
  episodic reasoning is a folder of JPEG frames at 3 fps, ``tvqa/frames_fps3_hq/<video>/``); lmms-eval's re-cut
  copy (``star/Charades_segment``, ``tvqa/video_fps3_hq_segment``, ..., whole files, no bounds) is found too.
  Give the ``json/`` folder (videos: the folder above it, or its ``video/``) or one task file. Group: ``task``.
* **NExT-QA** (Xiao et al. 2021, github.com/doc-doc/NExT-QA): the multiple-choice split ``nextqa/val.csv`` /
  ``test.csv`` (columns ``video, frame_count, width, height, question, answer, qid, type, a0..a4``; ``answer`` is
  the index of the right ``a<k>``), with ``map_vid_vidorID.json`` beside it (video id -> ``<folder>/<vidor id>``;
  videos ``NExTVideo/<folder>/<vidor id>.mp4``); or lmms-eval's table (huggingface.co/datasets/lmms-lab/NExTQA,
  ``MC/test-*.parquet``, same columns; videos ``NExTVideo/<video>.mp4``) as parquet / JSON / JSONL. Groups:
  ``type`` (CW, CH, TN, TC, DC, DL, DO; TP counts as TN, as lmms-eval does) and ``category`` (causal /
  temporal / descriptive, the paper's Acc@C / Acc@T / Acc@D).

Nothing is downloaded; a missing or malformed field is a ``ValueError`` naming the record.
"""

from __future__ import annotations

import csv
import glob
import json
import os

from vxl_jax.eval.choice import LETTERS
from vxl_jax.eval.readers import VIDEO_EXTENSIONS, Item, _candidates, _load_rows, _need, _options

VNBENCH_TASKS = {"ret": "retrieval", "ord": "ordering", "cnt": "counting"}

# task file stem -> (video folder of the release, lmms-eval's folder, has start/end, frame folder fps or None)
MVBENCH_TASKS = {
    "action_sequence": ("star/Charades_v1_480", "star/Charades_segment", True, None),
    "action_prediction": ("star/Charades_v1_480", "star/Charades_segment", True, None),
    "action_antonym": ("ssv2_video", "ssv2_video_mp4", False, None),
    "fine_grained_action": ("Moments_in_Time_Raw/videos", None, False, None),
    "unexpected_action": ("FunQA_test/test", None, False, None),
    "object_existence": ("clevrer/video_validation", None, False, None),
    "object_interaction": ("star/Charades_v1_480", "star/Charades_segment", True, None),
    "object_shuffle": ("perception/videos", None, False, None),
    "moving_direction": ("clevrer/video_validation", None, False, None),
    "action_localization": ("sta/sta_video", "sta/sta_video_segment", True, None),
    "scene_transition": ("scene_qa/video", None, False, None),
    "action_count": ("perception/videos", None, False, None),
    "moving_count": ("clevrer/video_validation", None, False, None),
    "moving_attribute": ("clevrer/video_validation", None, False, None),
    "state_change": ("perception/videos", None, False, None),
    "fine_grained_pose": ("nturgbd", "nturgbd_convert", False, None),
    "character_order": ("perception/videos", None, False, None),
    "egocentric_navigation": ("vlnqa", None, False, None),
    "episodic_reasoning": ("tvqa/frames_fps3_hq", "tvqa/video_fps3_hq_segment", True, 3.0),
    "counterfactual_inference": ("clevrer/video_validation", None, False, None),
}

NEXTQA_CATEGORIES = {"C": "causal", "T": "temporal", "D": "descriptive"}


# ---------------------------------------------------------------------------- VNBench

def _vnbench_answer(row: dict, options: list, where: str) -> str:
    gt = row["gt"]
    if isinstance(gt, int) and not isinstance(gt, bool):
        if not 0 <= gt < len(options):
            raise ValueError(f"{where}: gt index {gt} is not one of the {len(options)} options")
        return LETTERS[gt]
    if str(gt) not in options:
        raise ValueError(f"{where}: gt {gt!r} is not one of the options {options}")
    return LETTERS[options.index(str(gt))]


def read_vnbench(path) -> list[Item]:
    """VNBench ``VNBench-main-4try.json`` (see the module docstring)."""
    items, seen = [], {}
    for i, row in enumerate(_load_rows(path)):
        where = f"{path} record {i}"
        _need(row, ("video", "question", "options", "gt", "type"), where)
        options = _options(row["options"], where)
        name = os.path.basename(str(row["video"]))
        stem = os.path.splitext(name)[0]
        k = seen[stem] = seen.get(stem, -1) + 1
        kind = str(row["type"])
        items.append(Item(
            id=f"{stem}_{k}", video=name, question=str(row["question"]), options=options,
            answer=_vnbench_answer(row, options, where),
            groups={"type": kind, "task": VNBENCH_TASKS.get(kind.split("_")[0], kind)},
            meta={"sample": stem, "try": row.get("try", k), **{key: row[key] for key in ("needle_time", "length")
                                                               if key in row}},
            video_candidates=[os.path.join("VNBench_new", name), os.path.join("video", name),
                              str(row["video"]).lstrip("./")]))
    return items


# ---------------------------------------------------------------------------- MVBench

def _mvbench_clip(row: dict, bounded: bool, where: str):
    if not bounded or "start" not in row or "end" not in row:
        return None
    try:
        start, end = float(row["start"]), float(row["end"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: start / end {row['start']!r} / {row['end']!r} are not seconds") from None
    if not 0 <= start <= end:
        raise ValueError(f"{where}: start {start} / end {end} is not a clip")
    return (start, end)


def _mvbench_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    folder = os.path.join(path, "json") if os.path.isdir(os.path.join(path, "json")) else path
    files = sorted(glob.glob(os.path.join(folder, "*.json")))
    if not files:
        raise FileNotFoundError(f"no MVBench task JSON files in {folder}")
    return files


def read_mvbench(path) -> list[Item]:
    """MVBench ``json/<task>.json`` files (the folder, the dataset root, or one file; see the module docstring)."""
    items = []
    for file in _mvbench_files(os.fspath(path)):
        task = os.path.splitext(os.path.basename(file))[0]
        if task not in MVBENCH_TASKS:
            raise ValueError(f"{file}: {task!r} is not an MVBench task ({', '.join(MVBENCH_TASKS)})")
        folder, alt, bounded, frame_fps = MVBENCH_TASKS[task]
        for i, row in enumerate(_load_rows(file)):
            where = f"{file} record {i}"
            options = _candidates(row, where)
            video = str(row["video"])
            rels = [os.path.join(folder, video), os.path.join("video", folder, video)]
            alts = [os.path.join(p, video) for p in (alt, f"video/{alt}") if alt]
            if alt and frame_fps:  # lmms-eval's tvqa segments are mp4 files named after the frame folder
                alts += [p + ".mp4" for p in alts]
            items.append(Item(
                id=f"{task}/{i}", video=rels[0], question=str(row["question"]), options=options,
                answer=LETTERS[options.index(str(row["answer"]))], groups={"task": task},
                clip=_mvbench_clip(row, bounded, where), frame_fps=frame_fps,
                video_candidates=rels[1:] + alts, clip_paths=rels))
    return items


# ---------------------------------------------------------------------------- NExT-QA

def _nextqa_rows(path: str) -> list[dict]:
    if path.endswith(".csv"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"annotation file not found: {path}")
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    return _load_rows(path)


def _nextqa_map(path: str) -> dict:
    near = os.path.join(os.path.dirname(os.path.abspath(path)), "map_vid_vidorID.json")
    if not os.path.isfile(near):
        return {}
    with open(near, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{near}: expected an object video id -> '<folder>/<vidor id>'")
    return {str(k): str(v) for k, v in data.items()}


def _nextqa_answer(row: dict, n: int, where: str) -> str:
    try:
        k = int(row["answer"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: answer {row['answer']!r} is not an option index") from None
    if not 0 <= k < n:
        raise ValueError(f"{where}: answer {k} is not an index of the {n} options")
    return LETTERS[k]


def read_nextqa(path) -> list[Item]:
    """NExT-QA multiple choice (``val.csv`` / ``test.csv`` + ``map_vid_vidorID.json``, or lmms-eval's table)."""
    path = os.fspath(path)
    mapping = _nextqa_map(path)
    items = []
    for i, row in enumerate(_nextqa_rows(path)):
        where = f"{path} row {i}"
        _need(row, ("video", "question", "answer", "qid", "type", "a0", "a1"), where)
        options = _options([str(row[f"a{k}"]).strip() for k in range(5) if row.get(f"a{k}") not in (None, "")],
                           where)
        vid = str(row["video"])
        kind = "TN" if str(row["type"]) == "TP" else str(row["type"])
        rel = mapping.get(vid, vid)
        names = [rel] if rel == vid else [rel, vid]
        cands = [os.path.join(pre, n + ext) for n in names for pre in ("", "NExTVideo") for ext in VIDEO_EXTENSIONS]
        items.append(Item(
            id=f"{vid}_{row['qid']}", video=cands[0], question=str(row["question"]).strip(), options=options,
            answer=_nextqa_answer(row, len(options), where),
            groups={"type": kind, "category": NEXTQA_CATEGORIES.get(kind[:1], kind)},
            meta={k: row[k] for k in ("frame_count", "width", "height") if k in row}, video_candidates=cands[1:]))
    return items
