"""infer.py as a new user runs it: subprocesses on the embedded tiny model, answers checked against the API."""

import os
import pathlib
import subprocess
import sys

import pytest

from vxl_jax.video import write_sample_video

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUESTION = "What is in the video?"
EMBEDDED_NOTE = "no --model given: using the embedded tiny random model"


CACHE = {}


def infer(*args, cwd, timeout=300):
    """Run infer.py; the runs of this module share one fresh XLA compilation cache (as repeated user runs do)."""
    cmd = [sys.executable, str(ROOT / "infer.py"), *map(str, args), "--compile-cache", CACHE["dir"]]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    CACHE["dir"] = str(d / "xla_cache")
    write_sample_video(d / "clip.mp4", num_frames=12, size=(160, 96))  # 12 frames: 2 windows of the tiny model
    return d


@pytest.fixture(scope="module")
def expected_answer(work):
    """The answer computed in-process through the API (12 frames, ratio 8, 4 greedy tokens)."""
    from vxl_jax.demo import default_model
    from vxl_jax.preprocess import preprocess_frames
    from vxl_jax.prompt import question_ids
    from vxl_jax.video import load_video

    vx = default_model()
    frames, _ = load_video(work / "clip.mp4", 12)
    ids = vx.generate(question_ids(QUESTION, vx.tokenizer), preprocess_frames(frames), ratio=8, max_new_tokens=4)
    assert 1 <= len(ids) <= 4
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


def test_converted_model_folder(first_run, expected_answer, work):
    """--model DIR: the embedded model saved as a converted folder (with its tokenizer) gives the same answer."""
    from vxl_jax.checkpoint import save_converted
    from vxl_jax.demo import GENERATION_DEFAULTS, default_model

    vx = default_model()
    save_converted(work / "tiny_ckpt", vx.model, vx.tokenizer, GENERATION_DEFAULTS)
    r = infer("--model", "tiny_ckpt", "--question", QUESTION, cwd=work)  # no --video with a real model
    assert r.returncode == 2 and "--video is required" in r.stderr and r.stdout == ""
    r = infer("--model", "tiny_ckpt", "--memory", "clip.mem", "--question", QUESTION, "--max-new-tokens", 4,
              cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected_answer + "\n" and EMBEDDED_NOTE not in r.stderr


def test_more_frames_than_the_video_is_a_warning(work, expected_answer):
    r = infer("--video", "clip.mp4", "--question", QUESTION, "--max-new-tokens", 4, cwd=work)  # default: 20 frames
    assert r.returncode == 0, r.stderr
    assert "warning: 20 frames requested but clip.mp4 has only 12: using all 12 frames" in r.stderr
    assert r.stdout == expected_answer + "\n"  # the same 12 frames as the first run


def test_no_video_uses_a_generated_sample(work, tmp_path):
    r = infer("--question", QUESTION, "--max-new-tokens", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "outputs" / "sample.mp4").is_file() and "sample video" in r.stderr
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
    (["--video", "clip.mp4", "--question", "what is <image> here?"], "two placeholders"),
    (["--video", "clip.mp4", "--frames", 0], "--frames must be >= 1"),
    (["--video", "clip.mp4", "--greedy", "--temperature", 0.7], "--greedy cannot be combined with --temperature"),
    (["--video", "clip.mp4", "--memory", "clip.mem"], "either --video or --memory"),
    (["--memory", "nothing.mem"], "memory file not found"),
    (["--model", "no_such_dir", "--video", "clip.mp4"], "checkpoint folder not found"),
], ids=["missing", "corrupt", "zero-frames", "ratio", "two-placeholders", "frames", "greedy-temp",
        "video-and-memory", "missing-memory", "missing-model"])
def test_bad_input_is_one_line_and_exit_2(work, args, message):
    _bad_videos(work)
    if "--question" not in args:
        args = [*args, "--question", QUESTION]
    r = infer(*args, "--quiet", cwd=work, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_sampling_flags_map_to_generate_keywords():
    sys.path.insert(0, str(ROOT))
    import infer as cli

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
