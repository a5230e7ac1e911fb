"""Each ``infer.py`` mode (a plain video, ``--memory``, ``--fps``, ``--live``) fills a session, then asks through
the inference core: in-process ``main([...])`` runs on the embedded tiny model (built once for the module),
counting the core calls that reach the video (``InferenceCore.feed_windows``: frames per call) and the
questions asked over a video memory (``InferenceCore.prompt`` rows with a memory)."""

import threading

import pytest

from vxl_jax.cli import infer as cli
from vxl_jax.cli import infer_flow, infer_live
from vxl_jax.infer.core import InferenceCore
from vxl_jax.infer.demo import default_model
from vxl_jax.media.video import load_video, write_sample_video
from vxl_jax.text.prompt import question_ids

QUESTION = "What is in the video?"
FRAMES = 12  # one complete window of the tiny model (10 frames) and 2 frames of an unfinished one


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("flow")
    write_sample_video(d / "clip.mp4", num_frames=FRAMES, size=(160, 96))  # 24 fps
    frames, _ = load_video(d / "clip.mp4", FRAMES)
    (d / "clip.rgb").write_bytes(frames.tobytes())  # the same frames as a raw RGB24 stream for --live
    return d


@pytest.fixture(scope="module")
def tiny():
    return default_model()


@pytest.fixture(scope="module")
def expected(tiny, work):
    """The API's answer: the whole prompt and the clip's frames in one generate call (4 greedy tokens)."""
    frames, _ = load_video(work / "clip.mp4", FRAMES)
    ids = tiny.generate(question_ids(QUESTION, tiny.tokenizer), frames, ratio=8, max_new_tokens=4)
    return tiny.tokenizer.decode(ids, skip_special_tokens=True).strip() + "\n"


@pytest.fixture
def calls(monkeypatch, tiny):
    """What the next ``main([...])`` run asks of the core: ``feed`` (frames of each ``feed_windows`` call) and
    ``asked`` (rows over a video memory passed to ``prompt``). The run uses the module's model."""
    monkeypatch.setattr(infer_flow, "default_model", lambda dtype="float32", mesh=None: tiny)
    seen = {"feed": [], "asked": 0}
    feed_windows, prompt = InferenceCore.feed_windows, InferenceCore.prompt

    def counted_feed(self, mem, videos, *args, **kwargs):
        seen["feed"].append(sum(len(v.data) for v in videos if v is not None))
        return feed_windows(self, mem, videos, *args, **kwargs)

    def counted_prompt(self, rows, *args, **kwargs):
        seen["asked"] += sum(r.memory is not None for r in rows)
        return prompt(self, rows, *args, **kwargs)

    monkeypatch.setattr(InferenceCore, "feed_windows", counted_feed)
    monkeypatch.setattr(InferenceCore, "prompt", counted_prompt)
    return seen


def _main(*args) -> int:
    return cli.main([*map(str, args), "--max-new-tokens", "4", "--compile-cache", "none"])


def test_plain_video_then_saved_memory(work, expected, calls, capsys, monkeypatch):
    """A plain video: every frame added at once (the complete window compressed then, the 2 frames of the
    unfinished one when asked), one question over the memory; --memory asks over the saved one, feeding none."""
    monkeypatch.chdir(work)
    assert _main("--video", "clip.mp4", "--question", QUESTION, "--frames", FRAMES, "--save-memory", "clip.mem",
                 "--stats") == 0
    out = capsys.readouterr()
    assert out.out == expected and "frames: 12" in out.err and "visual_tokens: 1728" in out.err
    assert calls == {"feed": [10, 2], "asked": 1}
    calls.update(feed=[], asked=0)
    assert _main("--memory", "clip.mem", "--question", QUESTION, "--quiet") == 0
    out = capsys.readouterr()
    assert out.out == expected and out.err == ""
    assert calls == {"feed": [], "asked": 1}


def test_fps_streams_into_the_session(work, expected, calls, capsys, monkeypatch):
    """--fps 24 on the 24-fps clip: a window of frames at a time (10, then 2 left pending until asked)."""
    monkeypatch.chdir(work)
    assert _main("--video", "clip.mp4", "--question", QUESTION, "--fps", 24, "--quiet") == 0
    assert capsys.readouterr().out == expected
    assert calls == {"feed": [10, 2], "asked": 1}


class _QuestionAfterTheStream:
    """stdin for --live whose one question comes once the whole stream is taken (a deterministic run)."""

    def __init__(self, ready: threading.Event):
        self.ready = ready

    def __iter__(self):
        assert self.ready.wait(120), "the --live stream was never read to its end"
        yield QUESTION + "\n"


def test_live_queue_fills_the_session(work, expected, calls, capsys, monkeypatch):
    """--live: the queued frames are added a window at a time, the rest before the question."""
    monkeypatch.chdir(work)
    ready, ingest = threading.Event(), infer_live.LiveVideo.ingest

    def ingest_then_signal(self, block):
        ingest(self, block)
        if self.done:
            ready.set()

    monkeypatch.setattr(infer_live.LiveVideo, "ingest", ingest_then_signal)
    monkeypatch.setattr("sys.stdin", _QuestionAfterTheStream(ready))
    assert _main("--live", "clip.rgb", "--live-size", "160x96", "--live-idle", 0.2) == 0
    out = capsys.readouterr()
    assert out.out == expected and "[12 frames, video finished]" in out.err
    assert calls == {"feed": [10, 2], "asked": 1}


def test_usage_errors_load_nothing(calls, capsys):
    """A usage error is one line and exit 2, before any model work."""
    assert _main("--question", QUESTION, "--frames", 0) == 2
    assert capsys.readouterr().err == "error: --frames must be >= 1, got 0\n"
    assert calls == {"feed": [], "asked": 0}
