"""Evaluation on long-video benchmarks (MLVU, Video-MME, LongVideoBench, VNBench), short-video ones (MVBench,
NExT-QA) and the needle-in-a-video-haystack test. ``python -m vxl_jax.eval --help``; the pieces:

* ``readers``, ``readers_short``: released annotation layouts -> :class:`Item` lists; ``benchmarks``: each by name;
* ``choice``: the benchmarks' prompts, letter parsing, option log-likelihoods;
* ``run``: encode each video once, answer all its questions from its memory, resumable results;
* ``results``: ``results.jsonl`` + ``summary.json``;
* ``niah``: build the needle grid (``python -m vxl_jax.eval.niah``); ``heatmap``: its table and PNG.
"""

from vxl_jax.eval.benchmarks import read_benchmark
from vxl_jax.eval.choice import STYLES, PromptStyle, parse_letter
from vxl_jax.eval.readers import Item
from vxl_jax.eval.results import ResultsFile, summarize
from vxl_jax.eval.run import RunSettings, run_benchmark

__all__ = ["STYLES", "Item", "PromptStyle", "ResultsFile", "RunSettings", "parse_letter", "read_benchmark",
           "run_benchmark", "summarize"]
