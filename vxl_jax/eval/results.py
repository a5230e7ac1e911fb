"""Resumable results: ``results.jsonl`` (one line per scored item, appended and fsynced as it is scored)
and ``summary.json`` (accuracy overall and per group).

A crash or Ctrl-C loses no finished item: a line is only ever appended whole (a torn last line, from a
kill in the middle of a write, is dropped when the file is reopened), and a rerun skips every id already
in the file; :meth:`ResultsFile.append` refuses an id twice.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

from vxl_jax.runtime.atomic_io import atomic_open, write_text

TIMING_KEYS = ("timing",)  # fields that differ between two runs of the same evaluation


class ResultsFile:
    """Append-only JSON-lines results keyed by item ``id``."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.records: list[dict] = []
        if os.path.isfile(self.path):
            self._load()
        self.done = {r["id"] for r in self.records}

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        keep, seen = b"", set()
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn last line: its item was not finished
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{self.path}: unreadable line {len(self.records) + 1}; not a results file "
                                 f"of this tool?") from None
            if not isinstance(rec, dict) or "id" not in rec:
                raise ValueError(f"{self.path}: line {len(self.records) + 1} has no 'id'")
            if rec["id"] in seen:
                raise ValueError(f"{self.path}: item {rec['id']!r} is recorded twice")
            self.records.append(rec)
            seen.add(rec["id"])
            keep += line
        if len(keep) != len(data):  # drop the torn tail so the next append starts on a fresh line
            with atomic_open(self.path, "wb", "results file") as f:
                f.write(keep)

    def append(self, record: dict) -> None:
        rid = record["id"]
        if rid in self.done:
            raise ValueError(f"item {rid!r} is already in {self.path}; an item is never scored twice")
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        self.done.add(rid)


def summarize(records: list[dict], total: int | None = None) -> dict:
    """Accuracy overall, per value of every group key (``groups`` of each record), and for MLVU-style
    task groups also the mean of the per-task accuracies (``task_mean``, MLVU's "M-Avg")."""
    n = len(records)
    out = {"accuracy": (sum(bool(r["correct"]) for r in records) / n) if n else None, "scored": n}
    if total is not None:
        out["items"] = total
        out["complete"] = n == total
    unparsed = sum(r.get("prediction") is None for r in records)
    if unparsed:
        out["unparsed"] = unparsed
    by: dict = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in records:
        for key, value in (r.get("groups") or {}).items():
            cell = by[key][str(value)]
            cell[0] += bool(r["correct"])
            cell[1] += 1
    groups = {}
    for key, values in by.items():
        groups[key] = {v: {"accuracy": c / t, "correct": c, "total": t} for v, (c, t) in sorted(values.items())}
    if groups:
        out["groups"] = groups
    if "task" in groups and len(groups["task"]) > 1:
        out["task_mean"] = sum(v["accuracy"] for v in groups["task"].values()) / len(groups["task"])
    times = [r["timing"]["item_s"] for r in records if isinstance(r.get("timing"), dict) and "item_s" in r["timing"]]
    if times:  # the mean includes the first calls' compilation; the median is the steady state
        out["seconds_per_item"] = sum(times) / len(times)
        out["seconds_per_item_median"] = float(sorted(times)[len(times) // 2])
    return out


def write_json_atomic(path, obj) -> None:
    """``obj`` as JSON at ``path``, atomically (:mod:`vxl_jax.runtime.atomic_io`)."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=True), what="JSON file")
