#!/usr/bin/env python
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
whole command); peak_mem_bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import re
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

EXIT_BAD_INPUT = 2
DEFAULT_FRAMES = 128
DEMO_FRAMES = 20  # the embedded random model only demonstrates the pipeline: keep its default run short
EMBEDDED_NOTE = "no --model given: using the embedded tiny random model; answers are random tokens"
LONG_PROMPT_TOKENS = 2048  # text tokens above which a prompt draws a warning (at most a quarter of the context)


class UsageError(ValueError):
    """Bad command-line input (reported as one line, exit code 2)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
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
    p.add_argument("--ratio", default="8",
                   help="visual-token compression ratio, a positive integer that divides the beacon window (1440): "
                        "2, 4, 8, 12, 16, ... (default 8); or a comma-separated list (e.g. 2,8) for the original's "
                        "step-random mode (a ratio drawn per window)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length limit (default: the checkpoint's generation_config, else 64)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (overrides the checkpoint's sampling)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature, 0 = greedy; giving any of temperature/top-p/top-k "
                   "turns sampling on (default: the checkpoint's generation_config.json)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold (default: generation_config.json)")
    p.add_argument("--top-k", type=int, default=None, help="top-k sampling, 0 = off (default: generation_config.json)")
    p.add_argument("--repetition-penalty", type=float, default=None, help="HF-style repetition penalty, 1 = off (default: generation_config.json)")
    mem = p.add_mutually_exclusive_group()
    mem.add_argument("--save-memory", metavar="FILE", help="also save the compressed video memory to FILE")
    mem.add_argument("--memory", metavar="FILE", help="answer from a saved video memory instead of a video")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="parameter/compute dtype (default float32)")
    p.add_argument("--mesh", default=None, metavar="AXIS=N[,AXIS=N]",
                   help="run sharded over several devices, e.g. tensor=4 (tensor parallel over heads and MLP, the "
                        "KV memory over KV heads) or data=2,tensor=4; axes data, fsdp, tensor (default: one device)")
    p.add_argument("--stats", action="store_true", help="print frames, tokens, memory size and timings to stderr")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes (errors still go to stderr)")
    p.add_argument("--compile-cache", metavar="DIR", default=None,
                   help="persistent XLA compilation cache, makes repeated runs start faster; 'none' disables it "
                        "(default: $VXL_JAX_CACHE, else $XDG_CACHE_HOME/vxl_jax/xla, else ~/.cache/vxl_jax/xla)")
    return p.parse_args(argv)


def enable_compile_cache(path: str | None) -> None:
    """Persist compiled XLA programs (:mod:`vxl_jax.runtime.compile_cache`, shared with training): under ``path``, default
    ``$VXL_JAX_CACHE`` or ``$XDG_CACHE_HOME/vxl_jax/xla``; 'none' disables it; JAX_COMPILATION_CACHE_DIR wins."""
    from vxl_jax.runtime.compile_cache import default_cache_dir, enable_compilation_cache

    path = default_cache_dir() if path is None else path
    if (enable_compilation_cache(path) is None and path and path.lower() != "none"
            and not os.environ.get("JAX_COMPILATION_CACHE_DIR")):
        log(f"note: compilation cache disabled ({path} cannot be created)")


def parse_ratio(text) -> int | list[int]:
    """'8' -> 8; '2,8' -> [2, 8] (step-random mode). Positivity and divisibility are checked against the model."""
    if isinstance(text, (int, list)):
        return text
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"--ratio must be an integer or a comma-separated list of integers (e.g. 8 or 2,8), "
                         f"got {text!r}") from None
    return values[0] if len(values) == 1 else values


def check_args(a: argparse.Namespace) -> None:
    a.ratio = parse_ratio(a.ratio)
    if a.question is None and a.live is None:
        raise UsageError("--question is required (except with --live, which reads questions from stdin)")
    if a.fps is not None and a.frames is not None:
        raise UsageError("give --frames (uniform sampling) or --fps (frames per second), not both")
    if a.fps is not None and a.fps <= 0:
        raise UsageError(f"--fps must be positive, got {a.fps}")
    if a.live is not None:
        if a.video or a.memory:
            raise UsageError("--live reads its frames from the --live stream: no --video or --memory")
        a.live_size = parse_size(a.live_size)
        if a.live_buffer < 1:
            raise UsageError(f"--live-buffer must be at least 1 frame, got {a.live_buffer}")
        if a.live_fps is not None and a.live_fps <= 0:
            raise UsageError(f"--live-fps must be positive, got {a.live_fps}")
    if a.frames is None:
        a.frames = DEMO_FRAMES if a.model is None else DEFAULT_FRAMES
    if a.frames < 1:
        raise UsageError(f"--frames must be >= 1, got {a.frames}")
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
    if a.memory and a.video:
        raise UsageError("give either --video or --memory, not both")
    if a.memory and not os.path.isfile(a.memory):
        raise UsageError(f"memory file not found: {a.memory}")
    if a.model is not None and a.video is None and a.memory is None and a.live is None:
        raise UsageError("--video is required with --model (or --memory FILE from an earlier --save-memory)")


def parse_size(text) -> tuple[int, int]:
    """'336x336' -> (336, 336) (width, height)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not m or min(int(m[1]), int(m[2])) < 1:
        raise UsageError(f"--live-size must be WIDTHxHEIGHT (e.g. 336x336), got {text!r}")
    return int(m[1]), int(m[2])


def sampling_kwargs(a: argparse.Namespace) -> dict:
    """CLI flags -> VideoXL.generate keywords; None keeps the checkpoint's generation_config value."""
    kw = {"temperature": a.temperature, "top_p": a.top_p, "top_k": a.top_k,
          "repetition_penalty": a.repetition_penalty, "do_sample": None}
    if a.greedy or a.temperature == 0:
        kw.update(do_sample=False, temperature=None)
    elif any(v is not None for v in (a.temperature, a.top_p, a.top_k)):
        kw["do_sample"] = True
    return kw


def model_config(a: argparse.Namespace):
    """The model's VideoXLConfig without loading parameters (for early input checks)."""
    if a.model is None:
        from vxl_jax.infer.demo import tiny_config

        return tiny_config(a.dtype)
    from vxl_jax.convert.folder import check_converted_folder

    return check_converted_folder(a.model)


def sample_video_path() -> str:
    """The generated sample video, in the user's cache (never the current directory); written once."""
    from vxl_jax.media.video import write_sample_video

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "vxl_jax")
    path = os.path.join(folder, "sample.mp4")
    if not os.path.isfile(path):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            folder = os.path.join(tempfile.gettempdir(), "vxl_jax")
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, "sample.mp4")
        tmp = f"{path}.{os.getpid()}.tmp.mp4"
        write_sample_video(tmp)
        os.replace(tmp, path)  # atomic: a concurrent run never reads a half-written file
    return path


def read_frames(a: argparse.Namespace, cfg, timings: dict):
    """-> (uint8 [F, S, S, 3] resized + center-cropped frames, video info); CLIP normalization happens on the
    device (``VideoXLModel.encode_frames``)."""
    from vxl_jax.media.video import load_video

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the clipped case is reported below, once, in our own words
        frames, info = load_video(a.video, a.frames, size=cfg.vision.image_size)  # resized as decoded
    timings["read_video_s"] = time.perf_counter() - t
    if info["clipped"]:
        log(f"warning: {a.frames} frames requested but {a.video} has only {info['total_frames']}: "
            f"using all {info['total_frames']} frames")
    if not a.quiet:
        log(f"video: {a.video} ({info['total_frames']} frames, {info['fps']:.2f} fps, "
            f"{info['width']}x{info['height']}); using {info['num_frames']} frames")
    return frames, info


def check_ratio(cfg, ratio) -> None:
    for r in ratio if isinstance(ratio, list) else [ratio]:
        cfg.beacon.check_ratio(r)


def warn_last_window(cfg, frames: int, ratio) -> None:
    """The original keeps a ratio that does not divide the last (partial) window; say what that costs.
    (A list of ratios draws, per window, only among the ratios that divide it.)"""
    if isinstance(ratio, list):
        return
    b = cfg.beacon
    last = frames * b.tokens_per_frame % b.window
    if last and last % ratio:
        log(f"warning: the last window has {last} visual tokens, not a multiple of --ratio {ratio}: its last "
            f"{last % ratio} tokens are summarised by no beacon (as in the original); choose a frame count or "
            f"ratio that divides it")


def load_model(a: argparse.Namespace):
    mesh = None
    if a.mesh:
        from vxl_jax.runtime.sharding import inference_mesh

        try:
            mesh = inference_mesh(a.mesh)
        except ValueError as e:
            raise UsageError(f"--mesh: {e}") from None
    if a.model is None:
        from vxl_jax.infer.demo import default_model

        return default_model(dtype=a.dtype, mesh=mesh)
    from vxl_jax.infer.api import VideoXL

    return VideoXL.load(a.model, dtype=a.dtype, mesh=mesh)


class AnswerStream:
    """Writes the answer to stdout while it is generated (``generate(stream=...)`` calls it with each
    chunk of new ids), so that the finished output is exactly ``decode(ids).strip()`` and a newline.

    The text after the last whitespace (a word that later tokens may still extend or change, a partial
    UTF-8 character, trailing spaces that ``strip`` would drop) is held back until more text arrives.
    """

    def __init__(self, tokenizer, out=None):
        self.tokenizer, self.out = tokenizer, out or sys.stdout
        self.ids: list[int] = []
        self.written = ""

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()

    def _write(self, text: str) -> None:
        if text.startswith(self.written) and len(text) > len(self.written):
            self.out.write(text[len(self.written):])
            self.out.flush()
            self.written = text

    def __call__(self, new_ids) -> None:
        self.ids.extend(int(i) for i in new_ids)
        text = self.text()
        last_word = re.search(r"\s*\S*$", text)
        self._write(text[:last_word.start()])

    def finish(self, answer: str) -> None:
        """Write the rest of the final ``answer`` (the stripped decode of every id) and a newline."""
        if not answer.startswith(self.written):  # a decode that rewrote earlier text: print it whole on a new line
            self.out.write("\n")
            self.written = ""
        self._write(answer)
        self.out.write("\n")
        self.out.flush()


def cli_stats(prompt: dict, gen: dict, timings: dict, frames: int | None) -> dict:
    """The --stats report, in pipeline order, from the reports of the prompt stage (``prompt``) and of the
    decoding stage (``gen``: ``GenerateOutput.decode``) and the CLI's own stage timings."""
    out = {}
    frames = prompt.get("frames") if frames is None else frames
    if frames is not None:
        out["frames"] = frames
    out["visual_tokens"] = prompt.get("visual_tokens", 0)
    out["prompt_memory"] = prompt["memory_sizes"]
    out["generated"] = gen.get("generated", 0)
    out["kept_kv"] = gen.get("kept_kv", prompt["memory_sizes"]["total"])
    for k in ("read_video_s", "load_model_s"):
        if k in timings:
            out[k] = timings[k]
    out["prompt_s"] = timings["prompt_s"]
    out["prompt_compile_s"], out["prompt_run_s"] = prompt["compile_s"], prompt["run_s"]
    out["generate_s"] = timings["generate_s"]
    out["generate_compile_s"], out["generate_run_s"] = gen.get("decode_compile_s", 0.0), gen.get("decode_run_s", 0.0)
    out["wall_s"] = timings["wall_s"]
    out["peak_mem_bytes"] = gen.get("peak_mem_bytes", prompt.get("peak_mem_bytes", 0))
    return out


def print_stats(stats: dict) -> None:
    log("stats:")
    for k, v in stats.items():
        if k == "wall_s":
            v = f"{v:.3f} (the whole command)"
        elif isinstance(v, float):
            v = f"{v:.3f}"
        elif k == "peak_mem_bytes":
            v = f"{v} ({v / 2**20:.1f} MiB)"
        elif k == "kept_kv" and "prompt_memory" in stats:
            v = (f"{v} (after generation: prompt_memory total {stats['prompt_memory']['total']} + "
                 f"{v - stats['prompt_memory']['total']} generated tokens fed back; the last one never is)")
        log(f"  {k}: {v}")


def empty_answer_notice(out, stops: set[int]) -> str:
    """Why the answer is empty, in one line (the model stopped at once, or produced only special tokens)."""
    ids = [int(i) for i in out]
    if ids and ids[0] in stops:
        return (f"warning: empty answer: the model stopped at once (its first token was the stop token {ids[0]}); "
                f"an untrained or barely trained model often does this")
    return (f"warning: empty answer: the {len(ids)} generated token(s) {ids[:8]} decode to no text "
            f"(special tokens only)")


def check_prompt_length(n_text: int, max_new: int, cfg) -> str | None:
    """A warning for a prompt whose text is long for the model (None if fine); ``UsageError`` if the text
    and the answer cannot fit the model's context (``lm.max_position_embeddings``) at all.

    Text tokens are never compressed: each takes a memory slot, and Video-XL was trained on short questions."""
    context = cfg.lm.max_position_embeddings
    if n_text + max_new > context:
        raise UsageError(f"the prompt is {n_text} tokens and the answer may take {max_new}, more than the model's "
                         f"context of {context} positions; shorten the question")
    limit = min(LONG_PROMPT_TOKENS, context // 4)
    if n_text > limit:
        return (f"warning: the prompt is {n_text} text tokens (over {limit}, the model's context is {context}): "
                f"text is not compressed, answers to very long questions are unreliable and slow")
    return None


def run(a: argparse.Namespace, t_start: float | None = None) -> str:
    """Everything after argument parsing; streams the answer to stdout as it is generated and returns it.
    ``t_start``: when the command started (for ``wall_s``)."""
    from vxl_jax.text.prompt import DEFAULT_SYSTEM, chat_prompt, check_prompt, check_question

    t_start = time.perf_counter() if t_start is None else t_start
    check_args(a)
    if a.live is not None:
        return run_live(a)
    question = check_question(a.question)
    prompt = check_prompt(chat_prompt(question, DEFAULT_SYSTEM if a.system is None else a.system))
    cfg = checked_config(a)
    timings: dict = {}
    pixels, info = read_video_upfront(a, cfg, timings)
    vx = load_with_tokenizer(a, timings)
    stream = AnswerStream(vx.tokenizer)
    gen = dict(max_new_tokens=a.max_new_tokens, seed=a.seed, progress=not a.quiet, stream=stream,
               **sampling_kwargs(a))
    max_new = a.max_new_tokens or int(vx.generation_config.get("max_new_tokens", 64))
    if a.fps is not None:
        res, prompt_stats, t, info = answer_streamed_video(a, vx, cfg, prompt, gen, max_new, timings)
    elif a.memory is not None:
        res, prompt_stats, t = answer_over_memory(a, vx, cfg, question, gen, max_new)
    else:
        res, prompt_stats, t = answer_over_video(a, vx, cfg, prompt, question, pixels, gen, max_new)
    # generate() runs the (rest of the) prompt, reported in res.prompt["wall_s"], then the decoding
    generate_s = max(time.perf_counter() - t - res.prompt["wall_s"], 0.0)
    answer = decode_answer(vx, res.ids)
    stream.finish(answer)
    if not answer:
        log(empty_answer_notice(res.ids, vx.stop_ids()))
    if a.stats:
        timings.update(prompt_s=prompt_stats["wall_s"], generate_s=generate_s, wall_s=time.perf_counter() - t_start)
        print_stats(cli_stats(prompt_stats, res.decode, timings, info["num_frames"] if info is not None else None))
    return answer


def checked_config(a: argparse.Namespace):
    """The model's config (see :func:`model_config`) with ``--ratio`` checked against it; notes the embedded
    model when no ``--model`` is given."""
    if a.model is None and not a.quiet:
        log(EMBEDDED_NOTE)
    cfg = model_config(a)
    check_ratio(cfg, a.ratio)
    return cfg


def read_video_upfront(a: argparse.Namespace, cfg, timings: dict):
    """-> (frames, video info) read before the model loads; (None, None) with ``--memory`` or ``--fps`` (read
    while streaming). Without ``--video`` (and ``--memory``) the generated sample video is used."""
    if a.memory is not None:
        return None, None
    if a.video is None:
        a.video = sample_video_path()
        if not a.quiet:
            log(f"no --video given: using a generated sample video (moving shapes): {a.video}")
    if a.fps is not None:
        return None, None
    pixels, info = read_frames(a, cfg, timings)
    warn_last_window(cfg, info["num_frames"], a.ratio)
    return pixels, info


def load_with_tokenizer(a: argparse.Namespace, timings: dict | None = None):
    """Set up the compilation cache and load the model (its load time in ``timings['load_model_s']``);
    ``UsageError`` if the checkpoint has no tokenizer."""
    enable_compile_cache(a.compile_cache)
    t = time.perf_counter()
    vx = load_model(a)
    if timings is not None:
        timings["load_model_s"] = time.perf_counter() - t
    if vx.tokenizer is None:
        raise UsageError(f"{a.model} has no tokenizer files; convert the checkpoint with its tokenizer")
    return vx


def prompt_ids(prompt: str, vx, cfg, max_new: int):
    """The chat prompt's ids (-200 where the video goes); warns when its text is long for the model."""
    from vxl_jax.text.prompt import tokenizer_image_token

    with quiet_tokenizer_length_warning():
        ids = tokenizer_image_token(prompt, vx.tokenizer)
    warn_long_prompt(int((ids >= 0).sum()), max_new, cfg)
    return ids


def decode_answer(vx, ids) -> str:
    """Generated ids -> the answer text (special tokens dropped, stripped)."""
    return vx.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()


def add_stage_times(stats: dict, more: dict) -> dict:
    """``stats`` with the compile / run / wall times of another stage ``more`` added in."""
    return {**stats, **{k: stats[k] + more[k] for k in ("compile_s", "run_s", "wall_s")}}


def answer_streamed_video(a: argparse.Namespace, vx, cfg, prompt: str, gen: dict, max_new: int, timings: dict):
    """--fps: the video streamed into a session, then the question -> (generate output, prompt-stage stats
    with the ingestion, when generate started, video info)."""
    from vxl_jax.infer.api import split_prompt

    prefix, suffix = split_prompt(prompt_ids(prompt, vx, cfg, max_new))
    session, info, ingest = stream_into_session(a, vx, prefix, timings)
    if a.save_memory:
        vx.save_memory(a.save_memory, session.video_memory())
        if not a.quiet:
            log(f"saved the compressed video memory to {a.save_memory}")
    t = time.perf_counter()
    res = session.generate(suffix, return_output=True, **gen)
    prompt_stats = add_stage_times(dict(res.prompt), ingest)  # the question over the video memory, plus ingestion
    prompt_stats.update(frames=info["num_frames"], visual_tokens=info["num_frames"] * cfg.beacon.tokens_per_frame)
    return res, prompt_stats, t, info


def answer_over_memory(a: argparse.Namespace, vx, cfg, question: str, gen: dict, max_new: int):
    """--memory: the question over a saved video memory -> (generate output, prompt-stage stats, when generate
    started)."""
    from vxl_jax.text.prompt import suffix_ids

    mem = vx.load_memory(a.memory)
    with quiet_tokenizer_length_warning():
        text = suffix_ids(question, vx.tokenizer)
    warn_long_prompt(len(mem.prompt_ids) + len(text), max_new, cfg)
    t = time.perf_counter()
    res = vx.generate(text, None, memory=mem, return_output=True, **gen)
    return res, dict(res.prompt), t


def answer_over_video(a: argparse.Namespace, vx, cfg, prompt: str, question: str, pixels, gen: dict,
                      max_new: int):
    """The prompt with its video frames (with --save-memory: prefilled and saved first, then the question over
    the memory) -> (generate output, prompt-stage stats, when generate started)."""
    from vxl_jax.text.prompt import suffix_ids

    ids = prompt_ids(prompt, vx, cfg, max_new)
    if not a.save_memory:
        t = time.perf_counter()
        res = vx.generate(ids, pixels, ratio=a.ratio, return_output=True, **gen)
        return res, dict(res.prompt), t
    pre = vx.prefill(ids, pixels, ratio=a.ratio, progress=not a.quiet)
    vx.save_memory(a.save_memory, pre.video_memory)
    if not a.quiet:
        log(f"saved the compressed video memory to {a.save_memory} "
            f"(ask more questions with --memory {a.save_memory})")
    t = time.perf_counter()
    res = vx.generate(suffix_ids(question, vx.tokenizer), None, memory=pre.video_memory, return_output=True, **gen)
    # the question over the video memory: part of the prompt stage
    prompt_stats = add_stage_times(dict(pre.stats), res.prompt)
    prompt_stats["memory_sizes"] = res.prompt["memory_sizes"]
    return res, prompt_stats, t


def stream_into_session(a: argparse.Namespace, vx, prefix, timings: dict):
    """--fps: read the video a window of frames at a time into a session (progress bar over the known total)
    -> (session, video info, ingestion stats {compile_s, run_s, wall_s}). ``timings['read_video_s']``: decoding."""
    from tqdm.auto import tqdm

    from vxl_jax.media.video import TimedReader, VideoStream

    t0 = time.perf_counter()
    stream = VideoStream(a.video, fps=a.fps, size=vx.cfg.vision.image_size, batch=vx.cfg.beacon.frames_per_window)
    info = stream.info
    if not a.quiet:
        log(f"video: {a.video} ({info['total_frames']} frames, {info['fps']:.2f} fps, "
            f"{info['width']}x{info['height']}); streaming {info['num_frames']} frames at {a.fps:g} fps")
    warn_last_window(vx.cfg, info["num_frames"], a.ratio)
    c0, r0 = vx.engine.compile_s, vx.engine.run_s
    session = vx.session(prefix, ratio=a.ratio)
    bar = tqdm(total=len(stream), desc="frames", unit="frame", disable=a.quiet, leave=False)
    reader = TimedReader(stream)
    for chunk in reader:
        session.add_frames(chunk)
        bar.update(len(chunk))
    bar.close()
    read_s = reader.seconds
    timings["read_video_s"] = read_s
    wall = time.perf_counter() - t0 - read_s
    return session, info, {"compile_s": vx.engine.compile_s - c0, "run_s": vx.engine.run_s - r0, "wall_s": wall}


def run_live(a: argparse.Namespace) -> str:
    """--live: frames from a raw RGB24 stream are compressed as they arrive (a reader thread queues them);
    each line on stdin is a question, answered on stdout about the video seen so far. Ends at the end of stdin."""
    from vxl_jax.infer.api import split_prompt
    from vxl_jax.text.prompt import DEFAULT_SYSTEM, chat_prompt, check_question, suffix_ids, tokenizer_image_token

    cfg = checked_config(a)
    # the readers start first: frames that arrive while the model loads wait in the queue
    frames_q, questions_q = start_live_readers(a)
    vx = load_with_tokenizer(a)
    with quiet_tokenizer_length_warning():
        ids = tokenizer_image_token(chat_prompt("?", DEFAULT_SYSTEM if a.system is None else a.system), vx.tokenizer)
    prefix, _ = split_prompt(ids)  # the text before the video does not depend on the question
    video = LiveVideo(frames_q, vx.session(prefix, ratio=a.ratio), cfg.beacon.frames_per_window)
    gen = dict(max_new_tokens=a.max_new_tokens, seed=a.seed, progress=False, **sampling_kwargs(a))
    last = ""
    while True:
        video.ingest(block=False)
        try:
            question = questions_q.get(timeout=0.05)
        except queue.Empty:
            video.ingest(block=True)
            continue
        if question is None:
            break
        video.flush()
        try:
            text = suffix_ids(check_question(question), vx.tokenizer)
        except ValueError as e:
            log(f"error: {e}")
            continue
        if not a.quiet:
            log(f"[{video.session.frames} frames{', video finished' if video.done else ''}] {question}")
        stream = AnswerStream(vx.tokenizer)
        last = decode_answer(vx, video.session.generate(text, stream=stream, **gen))
        stream.finish(last)
    return last


def start_live_readers(a: argparse.Namespace) -> tuple[queue.Queue, queue.Queue]:
    """Start the daemon threads reading --live frames (every ``live_fps / fps``-th kept) and the questions on
    stdin (after ``--question``, if given) -> (frames queue, questions queue); each ends with None."""
    from vxl_jax.media.video import read_raw_frames

    step = max(1, round(a.live_fps / a.fps)) if a.fps and a.live_fps else 1
    width, height = a.live_size
    frames_q: queue.Queue = queue.Queue(maxsize=a.live_buffer)  # full: the reader waits (back-pressure)
    questions_q: queue.Queue = queue.Queue()

    def read_frames_thread():
        behind = False
        try:
            for i, frame in enumerate(read_raw_frames(a.live, width, height, follow=a.live_idle)):
                if i % step:
                    continue
                if frames_q.full() and not behind:
                    behind = True
                    log(f"--live: {a.live_buffer} frames waiting for the model (--live-buffer); the stream is now "
                        f"read at the model's pace")
                frames_q.put(frame)
        except OSError as e:
            log(f"error: cannot read --live {a.live}: {e}")
        frames_q.put(None)

    def read_questions_thread():
        for line in sys.stdin:
            if line.strip():
                questions_q.put(line.strip())
        questions_q.put(None)

    if a.question:
        questions_q.put(a.question)
    threading.Thread(target=read_frames_thread, daemon=True).start()
    threading.Thread(target=read_questions_thread, daemon=True).start()
    return frames_q, questions_q


class LiveVideo:
    """Frames from the reader queue fed into a session a whole window (``per`` frames) at a time."""

    def __init__(self, frames_q: queue.Queue, session, per: int):
        self.frames_q, self.session, self.per = frames_q, session, per
        self.pending: list = []
        self.done = False  # the reader reached the end of the stream

    def ingest(self, block: bool) -> None:
        """Take the queued frames (``block``: wait briefly for the first), adding each full window."""
        while not self.done:
            try:
                frame = self.frames_q.get(timeout=0.05) if block else self.frames_q.get_nowait()
            except queue.Empty:
                break
            if frame is None:
                self.done = True
            else:
                self.pending.append(frame)
            if len(self.pending) >= self.per:
                self.flush()

    def flush(self) -> None:
        """Add the frames taken so far (a partial window before a question)."""
        if self.pending:
            self.session.add_frames(np.stack(self.pending))
            self.pending.clear()


@contextlib.contextmanager
def quiet_tokenizer_length_warning():
    """transformers logs its own multi-line note for a text over the tokenizer's max length; we report the
    prompt length ourselves (``check_prompt_length``)."""
    logger = logging.getLogger("transformers.tokenization_utils_base")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def warn_long_prompt(n_text: int, max_new: int, cfg) -> None:
    warning = check_prompt_length(n_text, max_new, cfg)
    if warning:
        log(warning)


def main(argv=None) -> int:
    t_start = time.perf_counter()
    a = parse_args(argv)
    from vxl_jax.convert.errors import ConversionError

    try:
        run(a, t_start)  # the answer is written to stdout as it is generated
    except (ValueError, ConversionError, FileNotFoundError) as e:  # VideoError, PromptError, ConfigError, ...
        msg = " ".join(str(e).split()) or type(e).__name__
        log(f"error: {msg}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
