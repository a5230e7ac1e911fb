"""Each benchmark's score as its paper reports it, from the records of ``results.jsonl``.

* MLVU: M-Avg, the mean of the per-task accuracies; groups: the tasks.
* VNBench: circular, as the release's ``evaluation/eval.py``: a video (``meta.sample``) counts only when every
  try (the same question with rotated options) is answered right; per ``type`` the share of such videos; the
  score is the mean over types; groups: retrieval / ordering / counting (mean over their types), then the types.
* Video-MME: accuracy over questions; groups: short / medium / long.
* LongVideoBench: accuracy over questions; groups: the duration groups (15, 60, 600, 3600 s).
* MVBench: the mean of the 20 per-task accuracies; groups: the tasks.
* NExT-QA: accuracy over questions (Acc@All); groups: causal / temporal / descriptive (Acc@C, Acc@T, Acc@D).
* niah: accuracy over the grid; groups: needle depth (the heatmap has the whole grid).
"""

from __future__ import annotations

from collections import defaultdict

HEADLINES = {"mlvu": "M-Avg", "vnbench": "circular mean over types", "videomme": "accuracy",
             "longvideobench": "accuracy", "mvbench": "mean over tasks", "nextqa": "Acc@All", "niah": "accuracy"}
GROUP_KEYS = {"mlvu": "task", "videomme": "duration", "longvideobench": "duration_group", "mvbench": "task",
              "nextqa": "category", "niah": "depth"}
_ORDER = {"duration": ["short", "medium", "long"], "category": ["causal", "temporal", "descriptive"],
          "task_vnbench": ["retrieval", "ordering", "counting"]}


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _by(records, key: str) -> dict:
    """group value -> (correct, total) of the records' ``groups[key]``."""
    out: dict = defaultdict(lambda: [0, 0])
    for r in records:
        value = (r.get("groups") or {}).get(key)
        if value is not None:
            out[str(value)][0] += bool(r["correct"])
            out[str(value)][1] += 1
    return dict(out)


def _ordered(cells: dict, order: list | None) -> dict:
    def rank(k):
        if order and k in order:
            return (0, order.index(k), "")
        try:
            return (1, float(k), "")
        except ValueError:
            return (2, 0, k)
    return {k: cells[k] for k in sorted(cells, key=rank)}


def _vnbench(records) -> dict:
    samples: dict = defaultdict(lambda: defaultdict(list))  # type -> sample -> [correct per try]
    task_of = {}
    for r in records:
        g = r.get("groups") or {}
        samples[g.get("type")][(r.get("meta") or {}).get("sample", r["id"])].append(bool(r["correct"]))
        task_of[g.get("type")] = g.get("task")
    per_type = {t: {"accuracy": _mean(all(v) for v in s.values()), "total": len(s)} for t, s in samples.items()}
    tasks: dict = defaultdict(list)
    for t, cell in per_type.items():
        tasks[task_of[t]].append(cell)
    groups = {k: {"accuracy": _mean(c["accuracy"] for c in cells), "total": sum(c["total"] for c in cells)}
              for k, cells in tasks.items()}
    groups = {**_ordered(groups, _ORDER["task_vnbench"]), **dict(sorted(per_type.items()))}
    return {"metric": HEADLINES["vnbench"], "score": _mean(c["accuracy"] for c in per_type.values()),
            "groups": groups}


def paper_scores(benchmark: str, records: list[dict]) -> dict:
    """-> {"metric": name of the headline number, "score": float in [0, 1] or None (no records),
    "groups": {group: {"accuracy", "total"}}} (see the module docstring)."""
    if benchmark == "vnbench":
        return _vnbench(records)
    key = GROUP_KEYS.get(benchmark)
    cells = {k: {"accuracy": c / t, "total": t} for k, (c, t) in _by(records, key).items()} if key else {}
    cells = _ordered(cells, _ORDER.get(key))
    if benchmark == "niah":
        cells = {f"depth {float(k):g}%": c for k, c in cells.items()}
    if benchmark in ("mlvu", "mvbench"):
        score = _mean(c["accuracy"] for c in cells.values())
    else:
        score = _mean(bool(r["correct"]) for r in records)
    return {"metric": HEADLINES.get(benchmark, "accuracy"), "score": score, "groups": cells}
