"""What ``infer.py`` writes: the answer on stdout as it is generated, notes and errors on stderr (one line each),
and the ``--stats`` report. Standard library only: the argument parser uses it before anything heavy is loaded.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time

EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """Bad command-line input (reported as one line, exit code 2)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bad_input(e: Exception) -> int:
    """Report bad input (a usage error, an unreadable video, a memory file of another model, ...) as one line
    on stderr -> the exit code."""
    log(f"error: {' '.join(str(e).split()) or type(e).__name__}")
    return EXIT_BAD_INPUT


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


class StageClock:
    """The prompt stage of one answer, summed over the sections timed with :meth:`timed` (frames added to the
    session, its video memory) and the reports :meth:`add`-ed (the question over that memory): seconds spent
    compiling and running on the engine (its ``compile_s`` / ``run_s`` counters) and wall seconds. Reading
    the video and waiting for input are outside every section."""

    def __init__(self, engine):
        self.engine = engine
        self.reset()

    def reset(self) -> None:
        self.compile_s = self.run_s = self.wall_s = 0.0

    @contextlib.contextmanager
    def timed(self):
        c0, r0, t0 = self.engine.compile_s, self.engine.run_s, time.perf_counter()
        try:
            yield
        finally:
            self.add({"compile_s": self.engine.compile_s - c0, "run_s": self.engine.run_s - r0,
                      "wall_s": time.perf_counter() - t0})

    def add(self, report) -> None:
        """Add a stage report's ``compile_s``, ``run_s`` and ``wall_s``."""
        self.compile_s += report["compile_s"]
        self.run_s += report["run_s"]
        self.wall_s += report["wall_s"]


def cli_stats(out, stage: StageClock, timings: dict) -> dict:
    """The --stats report, in pipeline order, of one answer: ``out`` (its ``GenerateOutput``: the prompt report
    gives frames, visual tokens and memory sizes, the decode report the generation), ``stage`` (the prompt
    stage's times) and the command's own timings (``read_video_s`` / ``load_model_s`` when measured,
    ``generate_s``, ``wall_s``)."""
    prompt, gen = out.prompt, out.decode
    stats = {"frames": prompt["frames"], "visual_tokens": prompt["visual_tokens"],
             "prompt_memory": prompt["memory_sizes"], "generated": gen["generated"], "kept_kv": gen["kept_kv"]}
    stats.update({k: timings[k] for k in ("read_video_s", "load_model_s") if k in timings})
    stats.update(prompt_s=stage.wall_s, prompt_compile_s=stage.compile_s, prompt_run_s=stage.run_s,
                 generate_s=timings["generate_s"], generate_compile_s=gen["decode_compile_s"],
                 generate_run_s=gen["decode_run_s"], wall_s=timings["wall_s"], peak_mem_bytes=gen["peak_mem_bytes"])
    return stats


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
