"""The paper's tables in one command: run every benchmark found under a data folder and write ``OUT/suite.md``
(the layout of Video-XL's Tables 1-2: one row per model, a column per benchmark, then every benchmark's groups),
``OUT/suite.json`` and, when the needle test is there, its heatmap (``OUT/niah/heatmap.png`` / ``.md``).

    python -m vxl_jax.eval --suite DATA --out OUT [--model videoxl-jax] [--frames 128]

A benchmark is found by its folder's name under ``DATA`` (any case) and the release's files inside it
(:data:`LAYOUTS`: annotations first, then the videos folder). Each runs as ``python -m vxl_jax.eval --benchmark``
would, into ``OUT/<benchmark>/`` (resumable the same way). VNBench is sampled at 1 fps as Video-XL's
``eval_vnbench.py`` does, unless ``--fps`` is given; the needle test reads each of its videos whole.
"""

from __future__ import annotations

import dataclasses
import glob
import os

from vxl_jax.eval.heatmap import write_niah_report
from vxl_jax.eval.benchmarks import read_benchmark
from vxl_jax.eval.results import ResultsFile, write_json_atomic
from vxl_jax.eval.run import RunSettings, run_benchmark
from vxl_jax.eval.scores import paper_scores
from vxl_jax.runtime.atomic_io import write_text

# benchmark -> (folder names, annotation globs in order of preference, videos folders in order of preference)
LAYOUTS = {
    "mlvu": (("mlvu",), ("json", "MLVU/json"), ("", "MLVU")),
    "vnbench": (("vnbench", "videoniah"), ("VNBench-main-4try.json", "*.json"), ("",)),
    "longvideobench": (("longvideobench", "lvb"), ("lvb_val.json", "*.json", "*.parquet"), ("videos", "")),
    "videomme": (("videomme", "video-mme"), ("videomme/test*.parquet", "videomme/*.json", "videomme/*.jsonl",
                                             "*.parquet", "*.json", "*.jsonl"), ("data", "videos", "")),
    "mvbench": (("mvbench",), ("json",), ("video", "")),
    "nextqa": (("nextqa", "next-qa"), ("nextqa/val.csv", "val.csv", "nextqa/test.csv", "test.csv",
                                       "MC/test*.parquet", "*.parquet"), ("",)),
    "niah": (("niah",), ("niah.json",), ("videos",)),
}
TABLES = (("Long videos (Table 1)", (("mlvu", "MLVU (M-Avg)"), ("vnbench", "VNBench"),
                                     ("longvideobench", "LongVideoBench"), ("videomme", "Video-MME (w/o subs)"))),
          ("Short videos (Table 2)", (("mvbench", "MVBench"), ("nextqa", "NExT-QA"))))
NAMES = dict(pair for _, cols in TABLES for pair in cols) | {"niah": "Needle in a haystack"}
FPS_PRESETS = {"vnbench": 1.0}


@dataclasses.dataclass(frozen=True)
class Found:
    """A benchmark found under the data folder."""

    name: str
    annotations: str
    videos: str


def _first(root: str, patterns) -> str | None:
    for pattern in patterns:
        hits = sorted(glob.glob(os.path.join(root, pattern))) if pattern else [root]
        if hits:
            return hits[0]
    return None


def find_benchmarks(data_dir) -> list[Found]:
    """The benchmarks under ``data_dir`` in the tables' order (FileNotFoundError when there are none)."""
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"suite data folder not found: {data_dir}")
    folders = {n.lower(): os.path.join(data_dir, n) for n in sorted(os.listdir(data_dir))
               if os.path.isdir(os.path.join(data_dir, n))}
    found = []
    for name, (names, ann, vids) in LAYOUTS.items():
        root = next((folders[n] for n in names if n in folders), None)
        if root is None:
            continue
        annotations = _first(root, ann)
        videos = _first(root, [v for v in vids if not v or os.path.isdir(os.path.join(root, v))])
        if annotations is None:
            raise FileNotFoundError(f"{root}: no {name} annotations ({', '.join(ann)})")
        found.append(Found(name, annotations, videos))
    if not found:
        raise FileNotFoundError(f"no benchmark folder under {data_dir} (looked for {', '.join(sorted(LAYOUTS))})")
    return found


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def suite_table(scores: dict, model: str) -> str:
    """Markdown: the two tables (row: ``model``; a column per benchmark, percent) and a table of every group
    (Count: questions; VNBench's groups count videos, each asked its tries)."""
    out = []
    for title, cols in TABLES:
        out += [f"### {title}", "", "| Model | " + " | ".join(label for _, label in cols) + " |",
                "|---" * (len(cols) + 1) + "|",
                f"| {model} | " + " | ".join(_pct((scores.get(b) or {}).get("score")) for b, _ in cols) + " |", ""]
    out += ["### Per group", "", "| Benchmark | Score | Group | Accuracy | Count |", "|---|---|---|---|---|"]
    for b, s in scores.items():
        out.append(f"| {NAMES[b]} | {s['metric']}: {_pct(s['score'])} | | | {s.get('items', '')} |")
        out += [f"| | | {g} | {_pct(c['accuracy'])} | {c['total']} |" for g, c in s["groups"].items()]
    return "\n".join(out)


def run_suite(vx, data_dir, out_dir, base: RunSettings, limit: int | None = None, progress: bool = True) -> dict:
    """Run every benchmark of :func:`find_benchmarks` with ``base``'s settings (its ``benchmark`` is replaced)
    -> {benchmark: paper scores + items}; writes ``suite.md``, ``suite.json`` and the needle heatmap."""
    out_dir = os.fspath(out_dir)
    plan = []
    for f in find_benchmarks(data_dir):  # every annotation file is read before the first question
        items = read_benchmark(f.name, f.annotations)
        fps = base.fps if base.fps is not None or f.name not in FPS_PRESETS else FPS_PRESETS[f.name]
        plan.append((f, items[:limit] if limit else items, dataclasses.replace(base, benchmark=f.name, fps=fps)))
    scores = {}
    for f, items, settings in plan:
        sub = os.path.join(out_dir, f.name)
        run_benchmark(vx, items, f.videos, sub, settings=settings, progress=progress)
        records = ResultsFile(os.path.join(sub, "results.jsonl")).records
        scores[f.name] = {**paper_scores(f.name, records), "items": len(records),
                          "annotations": f.annotations, "videos": f.videos}
    table = suite_table(scores, base.model)
    if "niah" in scores:
        heat = write_niah_report(os.path.join(out_dir, "niah"), echo=False)
        table += f"\n\n### Needle in a haystack\n\n{heat}\n\n![needle heatmap](niah/heatmap.png)"
    write_text(os.path.join(out_dir, "suite.md"), table + "\n", what="suite table")
    write_json_atomic(os.path.join(out_dir, "suite.json"), {"model": base.model, "scores": scores})
    return scores
