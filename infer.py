#!/usr/bin/env python
"""Ask a question about a video with Video-XL (JAX).

    python infer.py --model CONVERTED_DIR --video clip.mp4 --question "What happens?"
    python infer.py --question "What happens?"            # embedded tiny random model + sample video
    python infer.py --model DIR --video v.mp4 --question "Q1" --save-memory v.mem   # keep the compressed video
    python infer.py --model DIR --memory v.mem --question "Q2"                      # ask again, no re-encoding

Only the answer goes to stdout; progress, notes and --stats go to stderr. Bad input (missing or
unreadable video, a ratio that does not divide the window, a second <image> placeholder, ...) is one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings

EXIT_BAD_INPUT = 2
DEFAULT_FRAMES = 128
DEMO_FRAMES = 20  # the embedded random model only demonstrates the pipeline: keep its default run short
EMBEDDED_NOTE = "no --model given: using the embedded tiny random model; answers are random tokens"


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
    p.add_argument("--question", required=True, help="the question about the video")
    p.add_argument("--system", default=None, help="system prompt (default: 'You are a helpful assistant.')")
    p.add_argument("--frames", type=int, default=None,
                   help=f"frames sampled uniformly from the video (default {DEFAULT_FRAMES}; "
                        f"{DEMO_FRAMES} with the embedded tiny model)")
    p.add_argument("--ratio", type=int, default=8,
                   help="visual-token compression ratio; must divide the beacon window (1440): 2, 4, 8, 12, 16, ... "
                        "(default 8)")
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
    p.add_argument("--stats", action="store_true", help="print frames, tokens, memory size and timings to stderr")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes (errors still go to stderr)")
    p.add_argument("--compile-cache", metavar="DIR", default=default_cache_dir(),
                   help="persistent XLA compilation cache, makes repeated runs start faster; 'none' disables it "
                        "(default %(default)s)")
    return p.parse_args(argv)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vxl_jax", "xla")


def enable_compile_cache(path: str) -> None:
    """Persist compiled XLA programs under ``path`` (unless JAX_COMPILATION_CACHE_DIR already chose one)."""
    if not path or path.lower() == "none" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import jax

    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        log(f"note: compilation cache disabled ({path}: {e.strerror})")
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def check_args(a: argparse.Namespace) -> None:
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
    if a.model is not None and a.video is None and a.memory is None:
        raise UsageError("--video is required with --model (or --memory FILE from an earlier --save-memory)")


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
        from vxl_jax.demo import tiny_config

        return tiny_config(a.dtype)
    from vxl_jax.checkpoint import check_converted_folder

    return check_converted_folder(a.model)


def sample_video_path() -> str:
    from vxl_jax.video import write_sample_video

    path = os.path.join("outputs", "sample.mp4")
    write_sample_video(path)
    return path


def read_frames(a: argparse.Namespace, cfg, timings: dict):
    """-> (uint8 [F, S, S, 3] resized + center-cropped frames, video info); CLIP normalization happens on the
    device (``VideoXLModel.encode_frames``)."""
    from vxl_jax.video import load_video

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the clipped case is reported below, once, in our own words
        frames, info = load_video(a.video, a.frames, size=cfg.vision.image_size)  # resized as decoded
    timings["decode_s"] = time.perf_counter() - t
    if info["clipped"]:
        log(f"warning: {a.frames} frames requested but {a.video} has only {info['total_frames']}: "
            f"using all {info['total_frames']} frames")
    if not a.quiet:
        log(f"video: {a.video} ({info['total_frames']} frames, {info['fps']:.2f} fps, "
            f"{info['width']}x{info['height']}); using {info['num_frames']} frames")
    return frames, info


def warn_last_window(cfg, frames: int, ratio: int) -> None:
    """The original keeps a ratio that does not divide the last (partial) window; say what that costs."""
    b = cfg.beacon
    last = frames * b.tokens_per_frame % b.window
    if last and last % ratio:
        log(f"warning: the last window has {last} visual tokens, not a multiple of --ratio {ratio}: its last "
            f"{last % ratio} tokens are summarised by no beacon (as in the original); choose a frame count or "
            f"ratio that divides it")


def load_model(a: argparse.Namespace):
    if a.model is None:
        from vxl_jax.demo import default_model

        return default_model(dtype=a.dtype)
    from vxl_jax.api import VideoXL

    return VideoXL.load(a.model, dtype=a.dtype)


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


def print_stats(stats: dict) -> None:
    log("stats:")
    for k, v in stats.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        elif k == "peak_mem_bytes":
            v = f"{v} ({v / 2**20:.1f} MiB)"
        log(f"  {k}: {v}")


def run(a: argparse.Namespace) -> str:
    """Everything after argument parsing; streams the answer to stdout as it is generated and returns it."""
    from vxl_jax.prompt import (DEFAULT_SYSTEM, chat_prompt, check_prompt, check_question, suffix_ids,
                                tokenizer_image_token)

    check_args(a)
    question = check_question(a.question)
    prompt = check_prompt(chat_prompt(question, DEFAULT_SYSTEM if a.system is None else a.system))
    if a.model is None and not a.quiet:
        log(EMBEDDED_NOTE)
    cfg = model_config(a)
    cfg.beacon.check_ratio(a.ratio)

    timings: dict = {}
    pixels = info = None
    if a.memory is None:
        if a.video is None:
            a.video = sample_video_path()
            if not a.quiet:
                log(f"no --video given: wrote a sample video (moving shapes, {a.video}) and using it")
        pixels, info = read_frames(a, cfg, timings)
        warn_last_window(cfg, info["num_frames"], a.ratio)

    enable_compile_cache(a.compile_cache)
    t = time.perf_counter()
    vx = load_model(a)
    timings["load_s"] = time.perf_counter() - t
    if vx.tokenizer is None:
        raise UsageError(f"{a.model} has no tokenizer files; convert the checkpoint with its tokenizer")
    stream = AnswerStream(vx.tokenizer)
    gen = dict(max_new_tokens=a.max_new_tokens, seed=a.seed, progress=not a.quiet, stream=stream,
               **sampling_kwargs(a))

    if a.memory is not None:
        mem = vx.load_memory(a.memory)
        out = vx.generate(suffix_ids(question, vx.tokenizer), None, memory=mem, **gen)
    else:
        ids = tokenizer_image_token(prompt, vx.tokenizer)
        if a.save_memory:
            res = vx.prefill(ids, pixels, ratio=a.ratio, progress=not a.quiet)
            prefill_stats = dict(vx.stats)
            vx.save_memory(a.save_memory, res.video_memory)
            if not a.quiet:
                log(f"saved the compressed video memory to {a.save_memory} "
                    f"(ask more questions with --memory {a.save_memory})")
            out = vx.generate(suffix_ids(question, vx.tokenizer), None, memory=res.video_memory, **gen)
            vx.stats = {**prefill_stats, **{k: v for k, v in vx.stats.items()
                                            if k in ("generated", "decode_compile_s", "decode_run_s", "kept_kv",
                                                     "peak_mem_bytes")}}
        else:
            out = vx.generate(ids, pixels, ratio=a.ratio, **gen)
    answer = vx.tokenizer.decode([int(i) for i in out], skip_special_tokens=True).strip()
    stream.finish(answer)
    if a.stats:
        stats = dict(vx.stats)
        if info is not None:
            stats["frames"] = info["num_frames"]
        print_stats({**stats, **timings})
    return answer


def main(argv=None) -> int:
    a = parse_args(argv)
    from vxl_jax.convert.errors import ConversionError

    try:
        run(a)  # the answer is written to stdout as it is generated
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
