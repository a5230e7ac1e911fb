"""``infer.py`` as one flow, after :mod:`vxl_jax.cli.infer` has parsed and checked the arguments. Every mode
fills a session, then asks, then reports:

- fill: every frame read up front (a plain video), a stream a window at a time (``--fps``), the live queue
  (``--live``, between questions), or a saved memory (``--memory``: ``vx.load_session``);
- ask (:func:`ask`): the session's video memory (frames of an unfinished window compressed as a clipped last
  window), then the question over it (``vx.generate(..., memory=...)``), the answer streamed to stdout;
- report (:func:`report`): the empty-answer notice, ``--save-memory``, ``--stats``.

Adding frames to a session in any chunking gives the memory and logits of one prefill, and greedy ids over
a memory equal the whole prompt's, so every mode answers as ``vx.generate(prompt_ids, frames)`` would.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import time

import numpy as np
from tqdm.auto import tqdm

from vxl_jax.beacon.ratios import check_ratio, parse_ratio
from vxl_jax.cli.infer_live import LiveVideo, start_live_readers
from vxl_jax.cli.infer_report import (AnswerStream, StageClock, UsageError, bad_input, cli_stats, empty_answer_notice,
                                      log, print_stats)
from vxl_jax.cli.infer_video import VideoFrames, open_video
from vxl_jax.config import tiny_config
from vxl_jax.convert.errors import ConversionError
from vxl_jax.convert.folder import check_converted_folder, has_tokenizer
from vxl_jax.infer.api import VideoXL
from vxl_jax.infer.demo import default_model
from vxl_jax.infer.results import GenerateOutput, VideoMemory, split_prompt
from vxl_jax.infer.session import Session
from vxl_jax.runtime.compile_cache import default_cache_dir, enable_compilation_cache
from vxl_jax.runtime.sharding import inference_mesh
from vxl_jax.text.constants import DEFAULT_SYSTEM
from vxl_jax.text.prompt import (
    chat_prompt,
    check_prompt,
    check_question,
    suffix_ids,
    tokenizer_image_token,
)

EMBEDDED_NOTE = "no --model given: using the embedded tiny random model; answers are random tokens"
LONG_PROMPT_TOKENS = 2048  # text tokens above which a prompt draws a warning (at most a quarter of the context)
BAD_INPUT = (ValueError, ConversionError, FileNotFoundError)  # UsageError, VideoError, PromptError, ConfigError, ...


def run(a: argparse.Namespace, t_start: float) -> int:
    """The command (arguments checked by ``vxl_jax.cli.infer.check_args``): answers on stdout -> 0, or bad input
    as one line on stderr -> 2. ``t_start``: when the command started (for ``wall_s``)."""
    try:
        if a.live is not None:
            answer_live(a, t_start)
        else:
            answer_question(a, t_start)
    except BAD_INPUT as e:
        return bad_input(e)
    return 0


def answer_question(a: argparse.Namespace, t_start: float) -> None:
    """``--question`` about a video (read up front or streamed with ``--fps``) or a saved ``--memory``."""
    question = check_question(a.question)
    check_prompt(chat_prompt(question, _system(a)))
    cfg = checked_config(a)
    timings: dict = {}
    video = open_video(a, cfg, timings)
    vx = load_with_tokenizer(a, timings)
    clock = StageClock(vx.engine)
    session = open_session(a, vx, clock)
    suffix = question_suffix(vx, session, question, max_new_tokens(a, vx), video.total if video else 0)
    fill(session, video, clock, timings, a.quiet)
    report(a, vx, ask(a, vx, session, suffix, clock), clock, timings, t_start)


def answer_live(a: argparse.Namespace, t_start: float) -> None:
    """``--live``: frames from a raw RGB24 stream are compressed as they arrive (reader threads queue them);
    each line on stdin is a question, answered on stdout about the video so far. Ends at the end of stdin."""
    cfg = checked_config(a)
    frames_q, questions_q = start_live_readers(a)  # first: frames that arrive while the model loads wait
    timings: dict = {}
    vx = load_with_tokenizer(a, timings)
    clock = StageClock(vx.engine)
    session = open_session(a, vx, clock)
    video = LiveVideo(frames_q, lambda frames: add_frames(session, frames, clock), cfg.beacon.frames_per_window)
    for question in video.questions(questions_q):
        try:
            suffix = question_suffix(vx, session, check_question(question), max_new_tokens(a, vx))
        except ValueError as e:  # one bad question ends nothing
            bad_input(e)
            continue
        if not a.quiet:
            log(f"[{session.frames} frames{', video finished' if video.done else ''}] {question}")
        report(a, vx, ask(a, vx, session, suffix, clock), clock, timings, t_start)


# ---------------------------------------------------------------------------- the model


def checked_config(a: argparse.Namespace):
    """The model's VideoXLConfig, read without loading parameters (for early input checks), with ``--ratio``
    parsed (``a.ratio``: an int, or a list for step-random) and checked against it; notes the embedded model
    when no ``--model`` is given."""
    if a.model is None and not a.quiet:
        log(EMBEDDED_NOTE)
    cfg = tiny_config(a.dtype) if a.model is None else check_converted_folder(a.model)
    if a.model is not None and not has_tokenizer(a.model):
        raise UsageError(f"{a.model} has no tokenizer files; convert the checkpoint with its tokenizer")
    a.ratio = parse_ratio(a.ratio)
    check_ratio(cfg.beacon, a.ratio)
    device_mesh(a)  # checked before any video is read
    return cfg


def device_mesh(a: argparse.Namespace):
    """``--mesh`` as a ``jax.sharding.Mesh`` (None: one device); ``UsageError`` if it is not one."""
    try:
        return inference_mesh(a.mesh) if a.mesh else None
    except ValueError as e:
        raise UsageError(f"--mesh: {e}") from None


def load_with_tokenizer(a: argparse.Namespace, timings: dict) -> VideoXL:
    """Set up the compilation cache and load the model (``timings['load_model_s']``); ``UsageError`` if the
    checkpoint has no tokenizer or ``--mesh`` is not a mesh."""
    enable_compile_cache(a.compile_cache)
    t = time.perf_counter()
    mesh = device_mesh(a)
    if a.model is None:
        vx = default_model(dtype=a.dtype, mesh=mesh)
    else:
        vx = VideoXL.load(a.model, dtype=a.dtype, mesh=mesh)
    timings["load_model_s"] = time.perf_counter() - t
    if vx.tokenizer is None:
        raise UsageError(f"{a.model} has no tokenizer files; convert the checkpoint with its tokenizer")
    return vx


def enable_compile_cache(path: str | None) -> None:
    """Persist compiled XLA programs (:mod:`vxl_jax.runtime.compile_cache`, shared with training): under ``path``,
    default ``$VXL_JAX_CACHE`` or ``$XDG_CACHE_HOME/vxl_jax/xla``; 'none' disables it; ``JAX_COMPILATION_CACHE_DIR``
    wins."""
    path = default_cache_dir() if path is None else path
    if (enable_compilation_cache(path) is None and path and path.lower() != "none"
            and not os.environ.get("JAX_COMPILATION_CACHE_DIR")):
        log(f"note: compilation cache disabled ({path} cannot be created)")


def max_new_tokens(a: argparse.Namespace, vx: VideoXL) -> int:
    return a.max_new_tokens or int(vx.generation_config.get("max_new_tokens", 64))


# ---------------------------------------------------------------------------- fill


def open_session(a: argparse.Namespace, vx: VideoXL, clock: StageClock) -> Session:
    """``--memory``: the saved memory as a session (``vx.load_session``); else a new session after the chat
    prompt's text before the video (the system prompt), with ``--ratio``."""
    with clock.timed():
        if a.memory is not None:
            return vx.load_session(a.memory)
        return vx.session(prefix_ids(_system(a), vx.tokenizer), ratio=a.ratio)


def prefix_ids(system: str, tokenizer) -> np.ndarray:
    """int32 ids of the chat prompt before the video placeholder (they do not depend on the question)."""
    with quiet_tokenizer_length_warning():
        prefix, _ = split_prompt(tokenizer_image_token(chat_prompt("?", system), tokenizer))
    return prefix


def fill(session: Session, video: VideoFrames | None, clock: StageClock, timings: dict, quiet: bool) -> None:
    """Add ``video``'s frames to the session as they are read (progress bar over the known total);
    ``timings['read_video_s']`` gains the reading time. Nothing to add with ``--memory``."""
    if video is None:
        return
    bar = tqdm(total=video.total, desc="frames", unit="frame", disable=quiet, leave=False)
    for chunk in video:
        add_frames(session, chunk, clock)
        bar.update(len(chunk))
    bar.close()
    timings["read_video_s"] = timings.get("read_video_s", 0.0) + video.reader.seconds


def add_frames(session: Session, frames: np.ndarray, clock: StageClock) -> None:
    """uint8 frames [n, H, W, 3] into the session (complete windows compressed now): prompt-stage work."""
    with clock.timed():
        session.add_frames(frames)


# ---------------------------------------------------------------------------- ask


def question_suffix(vx: VideoXL, session: Session, question: str, max_new: int, new_frames: int = 0) -> np.ndarray:
    """int32 ids of the prompt after the video for ``question``; warns when the prompt's text (the session's
    prefix and these ids) is long for the model, ``UsageError`` when the prompt (its text, the video's memory once
    ``new_frames`` more frames are compressed) and the answer cannot fit the model's positions."""
    with quiet_tokenizer_length_warning():
        suffix = suffix_ids(question, vx.tokenizer)
    st = session.state
    video_slots = beacon_slots(vx.cfg.beacon, st.pending_frames + new_frames, st.ratio)
    warning = check_prompt_length(len(st.prompt_ids), len(suffix), max_new, vx.cfg,
                                  memory=session.sizes["total"] - len(st.prompt_ids) + video_slots)
    if warning:
        log(warning)
    return suffix


def beacon_slots(beacon, frames: int, ratio) -> int:
    """Memory slots ``frames`` more frames take once compressed (every window at ``ratio``; for a list, its
    smallest ratio: the most slots a draw can take)."""
    r = ratio if isinstance(ratio, int) else min(ratio)
    visual, slots = int(frames) * beacon.tokens_per_frame, 0
    while visual > 0:
        slots += -(-min(visual, beacon.window) // r)
        visual -= beacon.window
    return slots


@dataclasses.dataclass(frozen=True)
class Answer:
    """One question's answer: ``output`` (``GenerateOutput``: ids, prompt / decode reports), the video ``memory``
    it was asked over, the answer ``text`` and ``generate_s`` (decoding wall time, the prompt stage excluded)."""

    output: GenerateOutput
    memory: VideoMemory
    text: str
    generate_s: float


def ask(a: argparse.Namespace, vx: VideoXL, session: Session, suffix: np.ndarray, clock: StageClock) -> Answer:
    """The question ``suffix`` over the video seen so far; the answer is written to stdout as it is generated.
    The session's video memory and the question's prompt are part of the prompt stage (``clock``)."""
    with clock.timed():
        memory = session.video_memory()
    stream = AnswerStream(vx.tokenizer)
    t = time.perf_counter()
    out = vx.generate(suffix, None, memory=memory, max_new_tokens=a.max_new_tokens, seed=a.seed,
                      progress=not a.quiet, stream=stream, return_output=True, **a.sampling)
    # generate() runs the question over the memory (reported in out.prompt), then decodes
    generate_s = max(time.perf_counter() - t - out.prompt["wall_s"], 0.0)
    clock.add(out.prompt)
    text = vx.tokenizer.decode([int(i) for i in out.ids], skip_special_tokens=True).strip()
    stream.finish(text)
    return Answer(out, memory, text, generate_s)


# ---------------------------------------------------------------------------- report


def report(a: argparse.Namespace, vx: VideoXL, answer: Answer, clock: StageClock, timings: dict,
           t_start: float) -> None:
    """After an answer: why it is empty (if it is), ``--save-memory`` (the video memory it was asked over),
    ``--stats``. The clock is reset: the next question's prompt stage starts now."""
    if not answer.text:
        log(empty_answer_notice(answer.output.ids, vx.stop_ids()))
    if a.save_memory:
        vx.save_memory(a.save_memory, answer.memory)
        if not a.quiet:
            log(f"saved the compressed video memory to {a.save_memory} "
                f"(ask more questions with --memory {a.save_memory})")
    if a.stats:
        times = {**timings, "generate_s": answer.generate_s, "wall_s": time.perf_counter() - t_start}
        print_stats(cli_stats(answer.output, clock, times))
    clock.reset()


# ---------------------------------------------------------------------------- prompts


def _system(a: argparse.Namespace) -> str:
    return DEFAULT_SYSTEM if a.system is None else a.system


@contextlib.contextmanager
def quiet_tokenizer_length_warning():
    """transformers logs its own multi-line note for a text over the tokenizer's max length; we report the
    prompt length ourselves (:func:`check_prompt_length`)."""
    logger = logging.getLogger("transformers.tokenization_utils_base")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_prompt_length(n_prefix: int, n_suffix: int, max_new: int, cfg, memory: int = 0) -> str | None:
    """A warning for a prompt whose text is long for the model (None if fine); ``UsageError`` if the prompt and
    the answer cannot fit the model's context (``lm.max_position_embeddings``) at all.

    ``n_prefix`` / ``n_suffix``: text tokens before / after the video (``--stats`` reports the latter as
    ``prompt_memory.text``); ``memory``: slots the video takes once compressed (beacons). Text tokens are never
    compressed: each takes a memory slot, and Video-XL was trained on short questions."""
    context = cfg.lm.max_position_embeddings
    n_text = n_prefix + n_suffix
    if n_text + memory + max_new > context:
        raise UsageError(f"the prompt takes {n_text + memory} positions ({n_text} text tokens, {memory} for the "
                         f"compressed video) and the answer may take {max_new}: more than the model's context of "
                         f"{context} positions; shorten the question or the video, lower --max-new-tokens, or "
                         f"raise --ratio")
    limit = min(LONG_PROMPT_TOKENS, context // 4)
    if n_text > limit:
        return (f"warning: the prompt is {n_text} text tokens (over {limit}, the model's context is {context}; "
                f"{n_prefix} before the video, {n_suffix} after it: --stats' prompt_memory text): text is not "
                f"compressed, answers to very long questions are unreliable and slow")
    return None
