"""python -m vxl_jax.eval --benchmark NAME --annotations FILE --videos DIR --out DIR  |  --suite DATA --out DIR

Writes OUT/results.jsonl (one line per question, appended as it is scored), OUT/summary.json (accuracy
overall and per group, and the paper's score) and, for niah, OUT/heatmap.png + OUT/heatmap.md. Rerunning the
same command resumes: finished questions are skipped, never scored twice. --suite DATA runs every benchmark
found under DATA (vxl_jax/eval/suite.py) into OUT/<benchmark>/ and writes OUT/suite.md, the paper's Tables 1-2.
No --model: the embedded tiny random model.
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
from vxl_jax.eval.heatmap import write_niah_report  # noqa: F401 (bench/niah_demo.py imports it from here)
from vxl_jax.eval.benchmarks import BENCHMARKS, read_benchmark
from vxl_jax.eval.run import RunSettings, SCORINGS, run_benchmark
from vxl_jax.eval.suite import run_suite
from vxl_jax.runtime.cli_args import OneLineParser

EXIT_BAD_INPUT = 2


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m vxl_jax.eval", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--benchmark", choices=BENCHMARKS,
                   help="which benchmark the annotations are (its reader and prompt style)")
    p.add_argument("--annotations",
                   help="annotation file (MLVU: a task JSON or the json/ folder; Video-MME: parquet/JSON/JSONL; "
                        "LongVideoBench: lvb_val.json; VNBench: VNBench-main-4try.json; MVBench: the json/ folder; "
                        "NExT-QA: val.csv / test.csv or lmms-eval's parquet; niah: niah.json)")
    p.add_argument("--videos", help="folder with the videos")
    p.add_argument("--suite", default=None, metavar="DATA",
                   help="run every benchmark found under DATA (instead of --benchmark/--annotations/--videos) and "
                        "write OUT/suite.md, the paper's Tables 1-2")
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
    a = p.parse_args(argv)
    if a.suite is None:
        missing = [f"--{k}" for k in ("benchmark", "annotations", "videos") if getattr(a, k) is None]
        if missing:
            p.error(f"the following arguments are required: {', '.join(missing)} (or --suite DATA)")
    elif a.benchmark or a.annotations or a.videos:
        p.error("--suite runs every benchmark under its folder: leave out --benchmark, --annotations and --videos")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        check_paths(a)
        items = None if a.suite else read_benchmark(a.benchmark, a.annotations)
        if items is not None and a.limit is not None:
            items = items[:a.limit]
        settings = RunSettings(a.benchmark or "suite", a.scoring, a.frames, a.fps, parse_ratio(a.ratio),
                               a.max_new_tokens, not a.no_memory,
                               os.path.abspath(a.model) if a.model else "embedded tiny model")
        cfg = tiny_config(a.dtype) if a.model is None else check_converted_folder(a.model)
        if settings.ratio is not None:  # checked against the model's config before it is loaded
            check_ratio(cfg.beacon, settings.ratio)
        vx = default_model(dtype=a.dtype) if a.model is None else VideoXL.load(a.model, dtype=a.dtype)
        if a.suite:
            scores = run_suite(vx, a.suite, a.out, settings, limit=a.limit, progress=not a.quiet)
            print(json.dumps({b: s["score"] for b, s in scores.items()}))
            return 0
        summary = run_benchmark(vx, items, a.videos, a.out, settings=settings, progress=not a.quiet)
    except (ValueError, FileNotFoundError, ConversionError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"interrupted: finished questions are in {a.out}; rerun the same command to resume", file=sys.stderr)
        return 130
    if a.benchmark == "niah":
        write_niah_report(a.out)
    print(json.dumps({k: summary[k] for k in ("accuracy", "scored", "items", "task_mean", "seconds_per_item",
                                              "seconds_per_item_median") if k in summary}))
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
    if a.suite is not None:
        if not os.path.isdir(a.suite):
            raise FileNotFoundError(f"suite data folder not found: {a.suite}")
    elif not os.path.isdir(a.videos):
        raise FileNotFoundError(f"videos folder not found: {a.videos}")
    elif not os.path.exists(a.annotations):
        raise FileNotFoundError(f"annotation file not found: {a.annotations}")
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        raise ValueError(f"--out {a.out} is a file; give a results folder")


if __name__ == "__main__":
    sys.exit(main())
