"""Ask a question about a video with Video-XL (JAX).

    python infer.py --model CONVERTED_DIR --video clip.mp4 --question "What happens?"
    python infer.py --question "What happens?"            # embedded tiny random model + sample video
    python infer.py --model DIR --video v.mp4 --question "Q1" --save-memory v.mem   # keep the compressed video
    python infer.py --model DIR --memory v.mem --question "Q2"                      # ask again, no re-encoding
    python infer.py --model DIR --video hour.mp4 --fps 1 --question "Q"   # stream a long video, bounded memory
    ffmpeg -i CAMERA -f rawvideo -pix_fmt rgb24 -s 336x336 cam.rgb &    # a live source (raw RGB24, growing)
    python infer.py --model DIR --live cam.rgb --live-size 336x336       # questions on stdin, answered as it goes

Only the answer goes to stdout; progress, notes, warnings and --stats go to stderr. Bad input (missing
or unreadable video, a ratio that does not divide the window, a second <image> placeholder, a memory
file saved by another model, ...) is one line on stderr and exit code 2.

--stats keys: frames, visual_tokens; prompt_memory (KV slots after the prompt: prefix / beacons / text /
total); generated; kept_kv (slots after generation: prompt_memory total + every generated token but the
last, which is never fed back); stage times read_video_s, load_model_s, prompt_s (prompt_compile_s +
prompt_run_s + host work), generate_s (generate_compile_s + generate_run_s + host work); wall_s (the
whole command); peak_mem_bytes. With --live, --stats and --save-memory apply to each answer (the video so far).

Layout: this module parses and checks the arguments (argparse and the standard library only, so ``--help``
and usage errors load no jax); :func:`main` then imports :mod:`vxl_jax.cli.infer_flow`, which runs every
mode as one flow (fill a session, ask, report).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from vxl_jax.cli.infer_report import UsageError, bad_input, log
from vxl_jax.runtime.atomic_io import WriteError, check_target
from vxl_jax.runtime.cli_args import OneLineParser

DEFAULT_FRAMES = 128
DEMO_FRAMES = 20  # the embedded random model only demonstrates the pipeline: keep its default run short


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(
        prog="infer.py", description="Answer a question about a video with Video-XL (JAX / Flax NNX). "
        "Only the answer is printed to stdout.")
    p.add_argument("--model", help="converted checkpoint folder (convert_weights.py); default: the embedded "
                                   "tiny random model (pipeline demo, random answers)")
    p.add_argument("--video", help="video file; default with the embedded model: a generated sample video")
    p.add_argument("--question", default=None, help="the question about the video (required except with --live, "
                                                     "where questions are read from stdin, one per line)")
    p.add_argument("--system", default=None, help="system prompt (default: 'You are a helpful assistant.')")
    p.add_argument("--frames", type=int, default=None,
                   help=f"frames sampled uniformly from the video (default {DEFAULT_FRAMES}; "
                        f"{DEMO_FRAMES} with the embedded tiny model)")
    p.add_argument("--fps", type=float, default=None,
                   help="sample this many frames per second instead of --frames, streaming: frames are read and "
                        "compressed a window at a time (memory independent of the video's length)")
    _add_live_args(p)
    p.add_argument("--ratio", default="8",
                   help="visual-token compression ratio, a positive integer that divides the beacon window (1440): "
                        "2, 4, 8, 12, 16, ... (default 8); or a comma-separated list (e.g. 2,8) for the original's "
                        "step-random mode (a ratio drawn per window)")
    _add_generation_args(p)
    mem = p.add_mutually_exclusive_group()
    mem.add_argument("--save-memory", metavar="FILE", help="also save the compressed video memory to FILE")
    mem.add_argument("--memory", metavar="FILE", help="answer from a saved video memory instead of a video")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="parameter/compute dtype (default float32)")
    p.add_argument("--mesh", default=None, metavar="AXIS=N[,AXIS=N]",
                   help="run sharded over several devices, e.g. tensor=4 (tensor parallel over heads and MLP, the "
                        "KV memory over KV heads) or data=2,tensor=4; axes data, fsdp, tensor (default: one device)")
    p.add_argument("--stats", action="store_true", help="print frames, tokens, memory size and timings to stderr")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes (errors still go to stderr)")
    p.add_argument("--compile-cache", metavar="DIR", default=None,
                   help="persistent XLA compilation cache, makes repeated runs start faster; 'none' disables it "
                        "(default: $VXL_JAX_CACHE, else $XDG_CACHE_HOME/vxl_jax/xla, else ~/.cache/vxl_jax/xla)")
    return p.parse_args(argv)


def _add_live_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--live", metavar="PATH", default=None,
                   help="live mode: read raw RGB24 frames (--live-size) from PATH (a pipe, FIFO or growing file), "
                        "compress them as they come and answer each question typed on stdin about the video so far")
    p.add_argument("--live-size", metavar="WxH", default=None, help="frame size of the --live stream, e.g. 336x336")
    p.add_argument("--live-fps", type=float, default=None,
                   help="frame rate of the --live stream; with --fps, every round(live_fps/fps)-th frame is kept")
    p.add_argument("--live-idle", type=float, default=1.0,
                   help="--live: seconds without new frames after which the video is taken as finished (default 1)")
    p.add_argument("--live-buffer", type=int, default=256,
                   help="--live: frames held while the model catches up (default 256); when the model falls behind, "
                        "the stream is read at its pace instead of piling up in memory")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length limit (default: max_new_tokens of the checkpoint's generation_config.json, "
                        "else 64; the embedded tiny model: 32); --max_new_tokens (HF's spelling) works too, as do "
                        "the other flags with underscores")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (overrides the checkpoint's sampling)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature, 0 = greedy; giving any of temperature/top-p/top-k turns sampling on "
                        "(default: the checkpoint's generation_config.json)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling threshold (default: generation_config.json)")
    p.add_argument("--top-k", type=int, default=None, help="top-k sampling, 0 = off (default: generation_config.json)")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="HF-style repetition penalty, 1 = off (default: generation_config.json)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")


def parse_size(text) -> tuple[int, int]:
    """'336x336' -> (336, 336) (width, height)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not m or min(int(m[1]), int(m[2])) < 1:
        raise UsageError(f"--live-size must be WIDTHxHEIGHT (e.g. 336x336), got {text!r}")
    return int(m[1]), int(m[2])


def check_args(a: argparse.Namespace) -> None:
    """``UsageError`` for contradictory or out-of-range flags; fills in what the flags leave open (``a.frames``'s
    default, ``a.live_size`` as (width, height), ``a.sampling``: generate keywords). ``--ratio`` is checked
    against the model, with the model's config (:func:`vxl_jax.cli.infer_flow.checked_config`)."""
    if a.question is None and a.live is None:
        raise UsageError("--question is required (except with --live, which reads questions from stdin)")
    if a.fps is not None and a.frames is not None:
        raise UsageError("give --frames (uniform sampling) or --fps (frames per second), not both")
    if a.fps is not None and a.fps <= 0:
        raise UsageError(f"--fps must be positive, got {a.fps}")
    if a.live is not None:
        _check_live(a)
    if a.frames is None:
        a.frames = DEMO_FRAMES if a.model is None else DEFAULT_FRAMES
    if a.frames < 1:
        raise UsageError(f"--frames must be >= 1, got {a.frames}")
    _check_generation(a)
    if a.memory and a.video:
        raise UsageError("give either --video or --memory, not both")
    if a.memory and not os.path.isfile(a.memory):
        raise UsageError(f"memory file not found: {a.memory}")
    if a.save_memory:  # before any video is read or encoded
        try:
            check_target(a.save_memory, "--save-memory")
        except WriteError as e:
            raise UsageError(str(e)) from None
    if a.model is not None and a.video is None and a.memory is None and a.live is None:
        raise UsageError("--video is required with --model (or --memory FILE from an earlier --save-memory)")
    a.sampling = sampling_kwargs(a)


def _check_live(a: argparse.Namespace) -> None:
    if a.video or a.memory:
        raise UsageError("--live reads its frames from the --live stream: no --video or --memory")
    a.live_size = parse_size(a.live_size)
    if not os.path.exists(a.live):
        raise UsageError(f"--live stream not found: {a.live} (start the producer first, or make a FIFO with mkfifo)")
    if os.path.isdir(a.live):
        raise UsageError(f"--live {a.live} is a folder; give the raw RGB24 stream (a file, pipe or FIFO)")
    if a.live_buffer < 1:
        raise UsageError(f"--live-buffer must be at least 1 frame, got {a.live_buffer}")
    if a.live_fps is not None and a.live_fps <= 0:
        raise UsageError(f"--live-fps must be positive, got {a.live_fps}")


def _check_generation(a: argparse.Namespace) -> None:
    if a.max_new_tokens is not None and a.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
    sampling = [f for f, v in (("--temperature", a.temperature), ("--top-p", a.top_p), ("--top-k", a.top_k))
                if v is not None]
    if a.greedy and sampling:
        raise UsageError(f"--greedy cannot be combined with {', '.join(sampling)}")
    if a.temperature is not None and a.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {a.temperature}")
    if a.top_p is not None and not 0 < a.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {a.top_p}")
    if a.top_k is not None and a.top_k < 0:
        raise UsageError(f"--top-k must be >= 0, got {a.top_k}")
    if a.repetition_penalty is not None and a.repetition_penalty <= 0:
        raise UsageError(f"--repetition-penalty must be > 0, got {a.repetition_penalty}")


def sampling_kwargs(a: argparse.Namespace) -> dict:
    """CLI flags -> VideoXL.generate keywords; None keeps the checkpoint's generation_config value."""
    kw = {"temperature": a.temperature, "top_p": a.top_p, "top_k": a.top_k,
          "repetition_penalty": a.repetition_penalty, "do_sample": None}
    if a.greedy or a.temperature == 0:
        kw.update(do_sample=False, temperature=None)
    elif any(v is not None for v in (a.temperature, a.top_p, a.top_k)):
        kw["do_sample"] = True
    return kw


def main(argv=None) -> int:
    """``infer.py``: the answer(s) on stdout -> 0; bad input -> one line on stderr and 2; Ctrl-C -> 130."""
    t_start = time.perf_counter()
    a = parse_args(argv)
    try:
        check_args(a)
        # The CLI's one lazy import: the flow loads jax and the model stack, which --help and usage errors
        # never need (tests/test_imports.py).
        from vxl_jax.cli import infer_flow

        return infer_flow.run(a, t_start)  # writes the answer to stdout as it is generated
    except UsageError as e:
        return bad_input(e)
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
