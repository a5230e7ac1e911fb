"""Load LLaVA-style training records (docs/algorithm.md §8).

A file is a JSON list of records (``.json``) or one record per line (``.jsonl``). A record::

    {"id": "...", "video": "rel/path.mp4" | "image": "rel/path.png" | neither,
     "conversations": [{"from": "human", "value": "<image>\\nQuestion"}, {"from": "gpt", "value": "Answer"}]}

Structural problems found at load time (malformed JSONL line, not an object, no conversations)
are returned as :class:`Skip` entries, logged with the record id and counted; they never stop the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Skip:
    """A record dropped at load time: its id (or ``file:line``) and why."""

    id: str
    reason: str


def _check(rec, where: str):
    if not isinstance(rec, dict):
        return Skip(where, f"record is a {type(rec).__name__}, not an object")
    rid = str(rec.get("id", where))
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        return Skip(rid, "no conversations")
    if "video" in rec and "image" in rec:
        return Skip(rid, "has both video and image")
    for key in ("video", "image"):
        if key in rec and not isinstance(rec[key], str):
            return Skip(rid, f"{key} must be one path string (lists are not supported)")
    return None


def load_records(path) -> tuple[list[dict], list[Skip]]:
    """-> (usable records, skipped). Each kept record gets ``id`` (default ``file:index``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training data file not found: {path}")
    raw: list[tuple[str, object]] = []
    skipped: list[Skip] = []
    name = os.path.basename(path)
    with open(path) as f:
        if path.endswith(".jsonl"):
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    raw.append((f"{name}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    skipped.append(Skip(f"{name}:{n}", f"malformed JSON ({e.msg})"))
        else:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
            raw = [(f"{name}:{i}", r) for i, r in enumerate(data)]
    records = []
    for where, rec in raw:
        bad = _check(rec, where)
        if bad is not None:
            skipped.append(bad)
            continue
        records.append({**rec, "id": str(rec.get("id", where))})
    for s in skipped:
        log.warning("skipping record %s: %s", s.id, s.reason)
    return records, skipped
