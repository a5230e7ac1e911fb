"""python -m vxl_jax.eval --benchmark {mlvu,videomme,longvideobench,niah} --annotations FILE --videos DIR --out DIR

Writes OUT/results.jsonl (one line per question, appended as it is scored), OUT/summary.json (accuracy
overall and per group) and, for niah, OUT/heatmap.png + OUT/heatmap.md. Rerunning the same command
resumes: finished questions are skipped, never scored twice. No --model: the embedded tiny random model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from vxl_jax.beacon.ratios import check_ratio, parse_ratio
from vxl_jax.config import tiny_config
from vxl_jax.convert.errors import ConversionError
from vxl_jax.convert.folder import check_converted_folder
from vxl_jax.infer.api import VideoXL
from vxl_jax.infer.demo import default_model
from vxl_jax.eval.heatmap import draw_heatmap, grid_table, niah_grid
from vxl_jax.eval.readers import read_benchmark
from vxl_jax.eval.results import ResultsFile
from vxl_jax.eval.run import RunSettings, SCORINGS, run_benchmark
from vxl_jax.runtime.atomic_io import write_text
from vxl_jax.runtime.cli_args import OneLineParser

EXIT_BAD_INPUT = 2


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m vxl_jax.eval", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--benchmark", required=True, choices=["mlvu", "videomme", "longvideobench", "niah"],
                   help="which benchmark the annotations are (its reader and prompt style)")
    p.add_argument("--annotations", required=True,
                   help="annotation file (MLVU: a task JSON or the json/ folder; Video-MME: parquet/JSON/JSONL; "
                        "LongVideoBench: lvb_val.json; niah: niah.json)")
    p.add_argument("--videos", required=True, help="folder with the videos")
    p.add_argument("--out", required=True, help="results folder (rerun with the same folder to resume)")
    p.add_argument("--model", default=None, help="converted model folder (default: the embedded tiny random model)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="parameter / compute dtype (default float32)")
    p.add_argument("--frames", type=int, default=None, help="frames per video, uniform (default 128; with --fps: the cap)")
    p.add_argument("--fps", type=float, default=None, help="sample this many frames per second instead")
    p.add_argument("--ratio", default=None,
                   help="compression ratio, an int that divides the 1440-token window (default 8), or a comma list "
                        "(e.g. 2,8) for step-random mode")
    p.add_argument("--scoring", default="generate", choices=SCORINGS,
                   help="generate: greedy answer, letter parsed (as the original); loglik: most likely option letter; "
                        "loglik-text: option text with the highest log-likelihood")
    p.add_argument("--max-new-tokens", type=int, default=32,
                   help="--scoring generate: answer length limit (default 32; --max_new_tokens works too)")
    p.add_argument("--no-memory", action="store_true", help="ablation: drop the video memory (chance level expected)")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        check_paths(a)
        items = read_benchmark(a.benchmark, a.annotations)
        if a.limit is not None:
            items = items[:a.limit]
        settings = RunSettings(a.benchmark, a.scoring, a.frames, a.fps, parse_ratio(a.ratio), a.max_new_tokens,
                               not a.no_memory, os.path.abspath(a.model) if a.model else "embedded tiny model")
        cfg = tiny_config(a.dtype) if a.model is None else check_converted_folder(a.model)
        if settings.ratio is not None:  # checked against the model's config before it is loaded
            check_ratio(cfg.beacon, settings.ratio)
        vx = default_model(dtype=a.dtype) if a.model is None else VideoXL.load(a.model, dtype=a.dtype)
        summary = run_benchmark(vx, items, a.videos, a.out, settings=settings, progress=not a.quiet)
    except (ValueError, FileNotFoundError, ConversionError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"interrupted: finished questions are in {os.path.join(a.out, 'results.jsonl')}; rerun the same "
              f"command to resume", file=sys.stderr)
        return 130
    if a.benchmark == "niah":
        write_niah_report(a.out)
    print(json.dumps({k: summary[k] for k in ("accuracy", "scored", "items", "task_mean", "seconds_per_item", "seconds_per_item_median")
                      if k in summary}))
    return 0


def check_paths(a: argparse.Namespace) -> None:
    """The flags' values and paths, before anything is loaded or written."""
    if a.frames is not None and a.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {a.frames}")
    if a.fps is not None and a.fps <= 0:
        raise ValueError(f"--fps must be > 0, got {a.fps}")
    if a.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
    if a.limit is not None and a.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {a.limit}")
    if not os.path.isdir(a.videos):
        raise FileNotFoundError(f"videos folder not found: {a.videos}")
    if not os.path.exists(a.annotations):
        raise FileNotFoundError(f"annotation file not found: {a.annotations}")
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        raise ValueError(f"--out {a.out} is a file; give a results folder")


def write_niah_report(out_dir: str) -> str:
    """heatmap.md (the table) and heatmap.png (when matplotlib is installed) from OUT/results.jsonl."""
    lengths, depths, acc, counts = niah_grid(ResultsFile(os.path.join(out_dir, "results.jsonl")).records)
    table = grid_table(lengths, depths, acc, counts)
    write_text(os.path.join(out_dir, "heatmap.md"), table + "\n", what="heatmap table")
    print(table)
    try:
        print(f"heatmap: {draw_heatmap(os.path.join(out_dir, 'heatmap.png'), lengths, depths, acc)}")
    except ImportError as e:
        print(f"note: {e}", file=sys.stderr)
    return table


if __name__ == "__main__":
    sys.exit(main())
