"""infer.py as a new user runs it, on the embedded tiny model; answers checked against the API.

A few runs go through the real entry point in a subprocess (``python infer.py ...``): the exit code, only the
answer on stdout, --stats, --save-memory then --memory, a converted --model folder, --live questions on stdin.
Every other case (usage errors, the other modes, warnings) calls ``vxl_jax.cli.infer.main([...])`` in this
process: it returns the exit code, its stdout and stderr are read with capsys, and each call is checked to
leave the process as it found it (jax config, environment, working directory, logging, standard streams).
"""

import argparse
import io
import logging
import os
import pathlib
import subprocess
import sys
import time

import decord  # noqa: F401 - adds its library folder to PATH when first imported: done before main() is checked
import jax
import numpy as np
import pytest

from vxl_jax.cli import infer as cli
from vxl_jax.cli import infer_live
from vxl_jax.convert.folder import save_converted
from vxl_jax.infer.demo import GENERATION_DEFAULTS, default_model
from vxl_jax.media.preprocess import preprocess_frames
from vxl_jax.media.video import load_video, write_sample_video
from vxl_jax.text.prompt import question_ids

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUESTION = "What is in the video?"
EMBEDDED_NOTE = "no --model given: using the embedded tiny random model"


CACHE = {}


def infer(*args, cwd, timeout=300, env=None):
    """Run infer.py in a subprocess; the runs share one persistent XLA cache (as repeated user runs do): the
    test run's own (tests/conftest.py), so they reuse what this process compiled, or a fresh one for the module."""
    cmd = [sys.executable, str(ROOT / "infer.py"), *map(str, args), "--compile-cache", CACHE["dir"]]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _process_state() -> dict:
    """What an in-process ``main`` must leave as it found it: {part: value or {name: value}}."""
    loggers = [("root", logging.root), *logging.root.manager.loggerDict.items()]
    return {
        "jax config": dict(jax.config.values),
        "environment": dict(os.environ),
        "working directory": os.getcwd(),
        "logging": {name: (lg.level, list(lg.handlers), lg.propagate, lg.disabled) for name, lg in loggers
                    if isinstance(lg, logging.Logger)},
        "standard streams": (sys.stdin, sys.stdout, sys.stderr),
    }


def _changes(before: dict, after: dict) -> dict:
    """{part: names changed, added or gone} between two ``_process_state``s; a logger first created during the
    call (a module imported for the first time) is not a change, its settings are checked on the next call."""
    out = {}
    for part, old in before.items():
        new = after[part]
        if not isinstance(old, dict):
            if new != old:
                out[part] = (old, new)
            continue
        keys = {k for k in old if k not in new or new[k] != old[k]}
        if part != "logging":
            keys |= set(new) - set(old)
        if keys:
            out[part] = sorted(map(str, keys))
    return out


@pytest.fixture
def main(monkeypatch, capsys):
    """``main(*args, cwd=DIR, env={...})`` -> CompletedProcess (returncode, stdout, stderr) of ``cli.main`` run in
    this process from ``cwd`` with ``--compile-cache none`` (the test run's cache stays as it is); fails when the
    call changed the process (see ``_process_state``)."""

    def run(*args, cwd, env=None):
        monkeypatch.chdir(cwd)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        argv = [*map(str, args), "--compile-cache", "none"]
        capsys.readouterr()
        before = _process_state()
        code = cli.main(argv)
        out, err = capsys.readouterr()
        changed = _changes(before, _process_state())
        assert not changed, f"main({argv}) changed the process: {changed}"
        return subprocess.CompletedProcess(argv, code, out, err)

    return run


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    CACHE["dir"] = jax.config.jax_compilation_cache_dir or str(d / "xla_cache")
    write_sample_video(d / "clip.mp4", num_frames=12, size=(160, 96))  # 12 frames: 2 windows of the tiny model
    return d


@pytest.fixture(scope="module")
def expected_answer(work, demo_vx):
    """The answer computed in-process through the API (12 frames, ratio 8, 4 greedy tokens)."""
    vx = demo_vx
    frames, _ = load_video(work / "clip.mp4", 12)
    ids = vx.generate(question_ids(QUESTION, vx.tokenizer), preprocess_frames(frames), ratio=8, max_new_tokens=4)
    assert 1 <= len(ids) <= 4
    CACHE["first_id"] = int(ids[0])
    return vx.tokenizer.decode(ids, skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def first_run(work):
    return infer("--video", "clip.mp4", "--question", QUESTION, "--max-new-tokens", 4, "--frames", 12,
                 "--save-memory", "clip.mem", "--stats", cwd=work)


def test_answer_on_stdout_logs_on_stderr(first_run, expected_answer, work):
    r = first_run
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected_answer + "\n"  # only the answer on stdout
    assert EMBEDDED_NOTE in r.stderr and "answers are random tokens" in r.stderr
    assert "using 12 frames" in r.stderr and "Traceback" not in r.stderr
    for key in ("frames: 12", "visual_tokens: 1728", "kept_kv:", "compile_s:", "run_s:", "peak_mem_bytes:"):
        assert key in r.stderr
    assert (work / "clip.mem").is_file()


def test_answer_from_saved_memory(first_run, expected_answer, work):
    assert first_run.returncode == 0, first_run.stderr
    r = infer("--memory", "clip.mem", "--question", QUESTION, "--max-new-tokens", 4, "--quiet", cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected_answer + "\n" and r.stderr == ""


def test_converted_model_folder(first_run, expected_answer, work, demo_vx, main):
    """--model DIR: the embedded model saved as a converted folder (with its tokenizer) gives the same answer."""
    vx = demo_vx
    save_converted(work / "tiny_ckpt", vx.model, vx.tokenizer, GENERATION_DEFAULTS)
    r = main("--model", "tiny_ckpt", "--question", QUESTION, cwd=work)  # no --video with a real model
    assert r.returncode == 2 and "--video is required" in r.stderr and r.stdout == ""
    r = infer("--model", "tiny_ckpt", "--memory", "clip.mem", "--question", QUESTION, "--max-new-tokens", 4,
              cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected_answer + "\n" and EMBEDDED_NOTE not in r.stderr


def test_more_frames_than_the_video_is_a_warning(work, expected_answer, main):
    r = main("--video", "clip.mp4", "--question", QUESTION, "--max-new-tokens", 4, cwd=work)  # default: 20 frames
    assert r.returncode == 0, r.stderr
    assert "warning: 20 frames requested but clip.mp4 has only 12: using all 12 frames" in r.stderr
    assert r.stdout == expected_answer + "\n"  # the same 12 frames as the first run


def test_no_video_uses_a_generated_sample(work, tmp_path, main):
    cache = tmp_path / "cache"
    run_dir = tmp_path / "cwd"
    run_dir.mkdir()
    r = main("--question", QUESTION, "--max-new-tokens", 2, cwd=run_dir, env={"XDG_CACHE_HOME": str(cache)})
    assert r.returncode == 0, r.stderr
    sample = cache / "vxl_jax" / "sample.mp4"  # in the user's cache, not the current directory
    assert sample.is_file() and "sample video" in r.stderr and str(sample) in r.stderr
    assert list(run_dir.iterdir()) == []
    assert "using 20 frames" in r.stderr and "warning" not in r.stderr and "error" not in r.stderr
    assert r.stdout.endswith("\n") and not r.stdout[:-1].startswith("\n")


def _bad_videos(d: pathlib.Path):
    (d / "junk.mp4").write_bytes(b"definitely not a video " * 50)
    (d / "noframes.y4m").write_bytes(b"YUV4MPEG2 W64 H48 F24:1 Ip A1:1 C420jpeg\n")


@pytest.mark.parametrize("args, message", [
    (["--video", "missing.mp4"], "video file not found: missing.mp4"),
    (["--video", "junk.mp4"], "cannot read video junk.mp4: not a readable video"),
    (["--video", "noframes.y4m"], "zero frames"),
    (["--video", "clip.mp4", "--ratio", 7], "compression ratio 7 does not divide the beacon window of 1440"),
    (["--video", "clip.mp4", "--ratio", 0], "compression ratio 0 is not positive; a ratio is a positive integer that "
                                            "divides the beacon window of 1440"),
    (["--video", "clip.mp4", "--ratio", "2,x"], "--ratio must be an integer or a comma-separated list"),
    (["--video", "clip.mp4", "--ratio", "2,7"], "compression ratio 7 does not divide"),
    (["--video", "clip.mp4", "--frames", 12, "--question", "a b " * 20000],
     "more than the model's context of 32768 positions"),
    (["--video", "clip.mp4", "--question", "what is <image> here?"], "two placeholders"),
    (["--video", "clip.mp4", "--frames", 0], "--frames must be >= 1"),
    (["--video", "clip.mp4", "--greedy", "--temperature", 0.7], "--greedy cannot be combined with --temperature"),
    (["--video", "clip.mp4", "--memory", "clip.mem"], "either --video or --memory"),
    (["--memory", "nothing.mem"], "memory file not found"),
    (["--model", "no_such_dir", "--video", "clip.mp4"], "checkpoint folder not found"),
], ids=["missing", "corrupt", "zero-frames", "ratio", "ratio-zero", "ratio-not-int", "ratio-list",
        "prompt-over-context", "two-placeholders", "frames", "greedy-temp",
        "video-and-memory", "missing-memory", "missing-model"])
def test_bad_input_is_one_line_and_exit_2(work, main, args, message):
    _bad_videos(work)
    if "--question" not in args:
        args = [*args, "--question", QUESTION]
    r = main(*args, "--quiet", cwd=work)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_sampling_flags_map_to_generate_keywords():
    kw = cli.sampling_kwargs(cli.parse_args(["--question", "q", "--greedy"]))
    assert kw["do_sample"] is False
    kw = cli.sampling_kwargs(cli.parse_args(["--question", "q", "--temperature", "0.7", "--top-p", "0.9"]))
    assert kw["do_sample"] is True and kw["temperature"] == 0.7 and kw["top_p"] == 0.9 and kw["top_k"] is None
    kw = cli.sampling_kwargs(cli.parse_args(["--question", "q", "--temperature", "0"]))
    assert kw["do_sample"] is False
    kw = cli.sampling_kwargs(cli.parse_args(["--question", "q", "--repetition-penalty", "1.05"]))
    assert kw["do_sample"] is None and kw["repetition_penalty"] == 1.05  # sampling as the checkpoint says
    a = cli.parse_args(["--question", "q"])
    cli.check_args(a)
    assert a.frames == cli.DEMO_FRAMES  # embedded model: short default run
    a = cli.parse_args(["--question", "q", "--model", "m", "--video", "v"])
    cli.check_args(a)
    assert a.frames == cli.DEFAULT_FRAMES == 128


def test_stats_name_each_stage(first_run):
    """--stats: reading the video, the prompt and generation each have their own clearly named times; wall_s is
    the whole command; kept_kv is explained against the prompt memory."""
    r = first_run
    assert r.returncode == 0, r.stderr
    stats = {}
    for line in r.stderr.split("stats:\n", 1)[1].splitlines():
        key, _, value = line.strip().partition(": ")
        stats[key] = value
    assert "decode_s" not in stats and "load_s" not in stats and "memory_sizes" not in stats
    for key in ("read_video_s", "load_model_s", "prompt_s", "prompt_compile_s", "prompt_run_s", "generate_s",
                "generate_compile_s", "generate_run_s", "wall_s", "prompt_memory", "generated", "kept_kv"):
        assert key in stats, (key, r.stderr)
    t = {k: float(v.split()[0]) for k, v in stats.items() if k.endswith("_s")}
    assert t["wall_s"] >= t["read_video_s"] + t["load_model_s"] + t["prompt_s"] + t["generate_s"]
    assert "(the whole command)" in stats["wall_s"]
    total = eval(stats["prompt_memory"])["total"]  # noqa: S307 - a dict repr we printed
    kept, generated = int(stats["kept_kv"].split()[0]), int(stats["generated"])
    assert kept == total + generated - 1 and f"prompt_memory total {total}" in stats["kept_kv"]


def test_ratio_list_is_step_random_mode(work, main):
    """--ratio 2,8: the library's step-random mode (a ratio drawn per window), same answer as the API."""
    vx = default_model()  # its own: the ratio RNG must start where infer.py's model starts
    frames, _ = load_video(work / "clip.mp4", 12)
    ids = vx.generate(question_ids(QUESTION, vx.tokenizer), preprocess_frames(frames), ratio=[2, 8], max_new_tokens=2)
    r = main("--video", "clip.mp4", "--question", QUESTION, "--max-new-tokens", 2, "--frames", 12, "--ratio", "2,8",
              "--quiet", cwd=work)
    assert r.returncode == 0, r.stderr
    answer = vx.tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert r.stdout == answer + "\n"


def _converted(work, name, seed=0, swap_logits=None):
    """The embedded model (``seed``: its random init) saved as a converted folder; ``swap_logits=(a, b)`` swaps
    two lm_head columns (the model then says b where it said a)."""
    if not (work / name).exists():
        vx = default_model(seed=seed)
        if swap_logits is not None:
            a, b = swap_logits
            head = vx.model.lm.lm_head
            head[...] = head[...].at[:, [a, b]].set(head[...][:, [b, a]])
        save_converted(work / name, vx.model, vx.tokenizer, GENERATION_DEFAULTS)
    return name


def test_empty_answer_gets_a_notice(first_run, expected_answer, work, main):
    """A model whose first token is the eos token (as the briefly trained demo's) answers nothing: say why."""
    assert first_run.returncode == 0, first_run.stderr
    first = CACHE["first_id"]
    model = _converted(work, "stops_at_once", swap_logits=(first, 2))  # its first token becomes eos (2)
    # (the video is encoded again: another lm_head is another model, whose fingerprint refuses clip.mem)
    r = main("--model", model, "--video", "clip.mp4", "--frames", 12, "--question", QUESTION, "--max-new-tokens", 4,
             "--quiet", cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "\n"  # the stdout format is unchanged: the (empty) answer and a newline
    assert "empty answer" in r.stderr and "stopped at once (its first token was the stop token 2)" in r.stderr


def test_memory_from_another_model_is_refused(first_run, work, main):
    assert first_run.returncode == 0, first_run.stderr
    model = _converted(work, "other_seed", seed=1)
    r = main("--model", model, "--memory", "clip.mem", "--question", QUESTION, "--max-new-tokens", 2, "--quiet",
              cwd=work)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "made by another model" in lines[0] and "Traceback" not in r.stderr


def test_long_question_is_a_warning(first_run, work, main):
    assert first_run.returncode == 0, first_run.stderr
    question = "What is the man holding in his left hand? " * 470  # 19 740 characters, 9 400 tokens
    r = main("--memory", "clip.mem", "--question", question, "--max-new-tokens", 1, "--quiet", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "warning: the prompt is 9" in r.stderr and "text tokens (over 2048" in r.stderr


def test_fps_streams_the_video(work, expected_answer, main):
    """--fps 24 on the 24-fps clip keeps every frame: the streamed (session) answer equals the API's."""
    r = main("--video", "clip.mp4", "--question", QUESTION, "--max-new-tokens", 4, "--fps", 24, "--stats", cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected_answer + "\n"
    assert "streaming 12 frames at 24 fps" in r.stderr
    assert "frames: 12" in r.stderr and "visual_tokens: 1728" in r.stderr and "read_video_s" in r.stderr
    bad = main("--video", "clip.mp4", "--question", QUESTION, "--fps", 1, "--frames", 4, cwd=work)
    assert bad.returncode == 2 and "not both" in bad.stderr


def test_live_answers_questions_from_stdin(work, expected_answer, main):
    """--live: raw RGB24 frames from a file, questions on stdin, one answer per question on stdout."""
    frames, _ = load_video(work / "clip.mp4", 12)
    (work / "clip.rgb").write_bytes(frames.tobytes())
    cmd = [sys.executable, str(ROOT / "infer.py"), "--live", "clip.rgb", "--live-size", "160x96", "--max-new-tokens",
           4, "--compile-cache", CACHE["dir"]]
    r = subprocess.run(list(map(str, cmd)), cwd=work, input=f"{QUESTION}\n\n{QUESTION}\n", capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{expected_answer}\n{expected_answer}\n"  # the blank line is no question
    assert r.stderr.count("[12 frames") == 2
    bad = main("--live", "clip.rgb", "--live-size", "160", cwd=work)
    assert bad.returncode == 2 and "WIDTHxHEIGHT" in bad.stderr


def test_live_reader_waits_when_the_model_falls_behind(work, tmp_path, monkeypatch, capsys, main):
    """--live holds at most --live-buffer frames: past that the reader waits for the model (the stream is read
    at the model's pace) instead of piling the frames up in memory; none is lost or reordered."""
    frames = np.random.default_rng(0).integers(0, 256, (10, 4, 6, 3), dtype=np.uint8)
    (tmp_path / "s.rgb").write_bytes(frames.tobytes())
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no questions
    a = argparse.Namespace(live=str(tmp_path / "s.rgb"), live_size=(6, 4), live_fps=None, fps=None, live_idle=0.1,
                           live_buffer=3, question=None)
    frames_q, questions_q = infer_live.start_live_readers(a)
    deadline = time.monotonic() + 10
    while not frames_q.full() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # time enough to read all 10 frames if nothing held the reader back
    assert frames_q.qsize() == 3
    got = []
    while (frame := frames_q.get(timeout=10)) is not None:
        got.append(frame)
    np.testing.assert_array_equal(np.stack(got), frames)
    assert questions_q.get(timeout=10) is None
    assert "--live: 3 frames waiting for the model" in capsys.readouterr().err
    bad = main("--live", "s.rgb", "--live-size", "6x4", "--live-buffer", 0, cwd=tmp_path)
    assert bad.returncode == 2 and "--live-buffer must be at least 1" in bad.stderr
