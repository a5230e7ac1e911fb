"""The bad-input table (issue 21): every entry point (infer.py, train.py, convert_weights.py, python -m vxl_jax.eval)
called in this process with ``main([...])``; each case must exit 2, print exactly one line on stderr (nothing on
stdout) containing the expected words, and write nothing (the work folder is unchanged, no new file or folder).
Process-level faults (file-size limit, SIGKILL, a read-only folder) are in tests/test_atomic_io.py.

Cases that get as far as loading the embedded model (a memory of another model, a prompt past the context,
NaN frames) are few: most are refused while the arguments are checked, before jax is needed.
"""

import json
import os
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from vxl_jax.cli import convert as convert_cli
from vxl_jax.cli import infer as infer_cli
from vxl_jax.cli import train as train_cli
from vxl_jax.eval import __main__ as eval_cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAINS = {"infer": infer_cli.main, "train": train_cli.main, "convert": convert_cli.main, "eval": eval_cli.main}
QUICK = ["--max-new-tokens", "2", "--quiet", "--compile-cache", "none"]


def _memory(cfg, path, fingerprint, slots=23):
    """A small valid memory file (zero K/V) without running the model."""
    from vxl_jax.beacon.memory import KVMemory
    from vxl_jax.infer import memory_file

    lm = cfg.lm
    kv = jnp.zeros((lm.num_layers, 1, slots, lm.num_kv_heads, lm.head_dim), jnp.float32)
    i32 = lambda x: jnp.array([x], jnp.int32)  # noqa: E731
    mem = KVMemory(kv, kv, i32(slots), i32(17), i32(slots - 17), i32(0))
    memory_file.save_memory(path, mem, cfg, extra=memory_file.video_facts(list(range(1, 18)), 1, 144),
                            fingerprint=fingerprint)


@pytest.fixture(scope="module")
def work(tmp_path_factory, demo_vx):
    from vxl_jax.convert import export_torch
    from vxl_jax.convert.folder import save_converted
    from vxl_jax.media.video import write_sample_video
    from vxl_jax.text.tokenizer import build_tiny_tokenizer

    d = tmp_path_factory.mktemp("bad")
    write_sample_video(d / "clip.mp4", num_frames=12, size=(160, 96))
    (d / "garbage.mp4").write_bytes(os.urandom(4096))
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.txt").write_text("not a video\n")
    (d / "garbage.mem").write_bytes(os.urandom(2048))
    _memory(demo_vx.cfg, d / "ours.mem", demo_vx.fingerprint())
    _memory(demo_vx.cfg, d / "foreign.mem", "f" * 32)
    good = (d / "ours.mem").read_bytes()
    (d / "trunc.mem").write_bytes(good[: len(good) // 2])
    (d / "frames.rgb").write_bytes(bytes(64 * 64 * 3 * 2))
    (d / "folder").mkdir()
    (d / "full").mkdir()
    (d / "full" / "x").write_text("x")
    (d / "hf").mkdir()
    (d / "hf" / "config.json").write_text("{}")
    save_converted(d / "model", demo_vx.model, build_tiny_tokenizer(), dict(demo_vx.generation_config))
    save_converted(d / "notok", demo_vx.model)
    export_torch(str(d / "model"), str(d / "torch"), progress=False)
    trunc = d / "torch_trunc"
    trunc.mkdir()
    for f in os.listdir(d / "torch"):
        data = (d / "torch" / f).read_bytes()
        (trunc / f).write_bytes(data[: len(data) // 2] if f.endswith(".safetensors") else data)
    (d / "bad.json").write_text("{not json")
    item = {"id": "a", "video": "missing.mp4", "question": "Q?", "options": ["red", "blue"], "answer": "A",
            "length": 4, "depth": 50}
    (d / "niah.json").write_text(json.dumps({"items": [item, {**item, "id": "b", "video": "gone.mp4"}]}))
    (d / "niah_bad_answer.json").write_text(json.dumps({"items": [{**item, "answer": "Z"}]}))
    (d / "videos").mkdir()
    (d / "tiny.yaml").write_text((ROOT / "configs" / "tiny.yaml").read_text())
    return d


def _tree(d) -> dict:
    out = {}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            out[os.path.relpath(p, d)] = (st.st_size, st.st_mtime_ns) if name in files else "dir"
    return out


V = ["--video", "clip.mp4", "--question", "What?"]
RUN = "train.workdir=run"  # every train case names a run folder that must not appear
CASES = [
    # ---- infer.py: arguments
    ("infer", ["--video", "clip.mp4"], "--question is required"),
    ("infer", [*V, "--frames", "0"], "--frames must be >= 1"),
    ("infer", [*V, "--frames", "abc"], "invalid int value"),
    ("infer", [*V, "--frames", "4", "--fps", "1"], "not both"),
    ("infer", [*V, "--fps", "0"], "--fps must be positive"),
    ("infer", [*V, "--ratio", "7"], "does not divide"),
    ("infer", [*V, "--ratio", "0"], "not positive"),
    ("infer", [*V, "--ratio", "abc"], "ratio"),
    ("infer", [*V, "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    ("infer", [*V, "--max_new_tokens", "-3"], "--max-new-tokens must be >= 1"),
    ("infer", [*V, "--temperature", "-1"], "--temperature must be >= 0"),
    ("infer", [*V, "--top-p", "0"], "--top-p must be in (0, 1]"),
    ("infer", [*V, "--top_p", "1.5"], "--top-p must be in (0, 1]"),
    ("infer", [*V, "--top-k", "-1"], "--top-k must be >= 0"),
    ("infer", [*V, "--repetition-penalty", "0"], "--repetition-penalty must be > 0"),
    ("infer", [*V, "--greedy", "--temperature", "0.5"], "--greedy cannot be combined"),
    ("infer", [*V, "--bogus"], "unrecognized arguments: --bogus"),
    ("infer", [*V, "--dtype", "int8"], "invalid choice"),
    ("infer", [*V, "--mesh", "colour=2"], "--mesh"),
    ("infer", ["--video", "clip.mp4", "--question", "   "], "question"),
    ("infer", ["--video", "clip.mp4", "--question", "a <image> b"], "<image>"),
    # ---- infer.py: files
    ("infer", ["--video", "missing.mp4", "--question", "Q"], "missing.mp4"),
    ("infer", ["--video", "garbage.mp4", "--question", "Q"], "garbage.mp4"),
    ("infer", ["--video", "empty.mp4", "--question", "Q"], "empty.mp4"),
    ("infer", ["--video", "notes.txt", "--question", "Q"], "notes.txt"),
    ("infer", ["--video", "folder", "--question", "Q"], "folder"),
    ("infer", ["--memory", "missing.mem", "--question", "Q"], "memory file not found"),
    ("infer", ["--memory", "garbage.mem", "--question", "Q"], "not a readable vxl-jax memory file"),
    ("infer", ["--memory", "trunc.mem", "--question", "Q"], "trunc.mem"),
    ("infer", ["--memory", "foreign.mem", "--question", "Q"], "made by another model (fingerprint ffffffff"),
    ("infer", ["--memory", "ours.mem", "--video", "clip.mp4", "--question", "Q"], "either --video or --memory"),
    ("infer", [*V, "--save-memory", "no/such/dir/m.mem"], "does not exist (create it first)"),
    ("infer", [*V, "--save-memory", "folder"], "it is a folder"),
    ("infer", ["--memory", "ours.mem", "--save-memory", "m.mem", "--question", "Q"], "not allowed with argument"),
    ("infer", ["--model", "missing_model", *V], "checkpoint folder not found"),
    ("infer", ["--model", "hf", *V], "looks like a PyTorch/Hugging Face checkpoint"),
    ("infer", ["--model", "full", *V], "is not a converted Video-XL checkpoint"),
    ("infer", ["--model", "model", "--question", "Q"], "--video is required with --model"),
    ("infer", ["--model", "notok", *V], "has no tokenizer files"),
    ("infer", [*V, "--frames", "12", "--max-new-tokens", "32700"], "more than the model's context of 32768"),
    # ---- infer.py --live
    ("infer", ["--live", "missing.rgb", "--live-size", "64x64"], "--live stream not found"),
    ("infer", ["--live", "folder", "--live-size", "64x64"], "is a folder"),
    ("infer", ["--live", "frames.rgb", "--live-size", "64"], "WIDTHxHEIGHT"),
    ("infer", ["--live", "frames.rgb", "--live-size", "0x64"], "WIDTHxHEIGHT"),
    ("infer", ["--live", "frames.rgb", "--live-size", "64x64", "--video", "clip.mp4"], "no --video or --memory"),
    ("infer", ["--live", "frames.rgb", "--live-size", "64x64", "--live-buffer", "0"], "--live-buffer"),
    ("infer", ["--live", "frames.rgb", "--live-size", "64x64", "--live-fps", "0"], "--live-fps must be positive"),
    # ---- train.py
    ("train", ["--config", "missing.yaml", RUN], "missing.yaml"),
    ("train", ["--config", "tiny.yaml", RUN, "train.bogus=1"], "bogus"),
    ("train", ["--config", "tiny.yaml", RUN, "train.steps=abc"], "steps"),
    ("train", ["--config", "tiny.yaml", RUN, "train.steps"], "train.steps"),
    ("train", ["--config", "tiny.yaml", RUN, "data.train=missing.json"], "data.train: missing.json not found"),
    ("train", ["--config", "tiny.yaml", RUN, "data.eval=missing.json"], "data.eval: missing.json not found"),
    ("train", ["--config", "tiny.yaml", RUN, "data.video_folder=nowhere"], "data.video_folder: folder nowhere"),
    ("train", ["--config", "tiny.yaml", RUN, "checkpoint.init_from=nowhere"], "checkpoint.init_from: nowhere"),
    ("train", ["--config", "tiny.yaml", RUN, "--export", "full"], "is not an export of a run"),
    ("train", ["--config", "tiny.yaml", RUN, "--export", "notes.txt"], "is not an export of a run"),
    ("train", ["--config", "tiny.yaml", RUN, "--num-processes", "x"], "invalid int value"),
    # ---- convert_weights.py
    ("convert", ["--src", "nowhere", "--dst", "out"], "nowhere"),
    ("convert", ["--src", "folder", "--dst", "out"], "folder"),
    ("convert", ["--src", "torch", "--dst", "full"], "already exists and is not empty"),
    ("convert", ["--src", "torch", "--dst", "out", "--dtype", "int8"], "invalid choice"),
    ("convert", ["--src", "torch", "--dst", "out", "--vision-config", "missing.json"],
     "--vision-config file not found"),
    ("convert", ["--src", "torch_trunc", "--dst", "out"], "torch_trunc"),
    ("convert", ["--src", "model", "--dst", "out"], "already a converted folder"),
    ("convert", ["--to-torch", "--src", "torch", "--dst", "out"], "looks like a PyTorch"),
    ("convert", ["--to-torch", "--src", "model", "--dst", "out", "--init-beacon"], "apply to torch -> ours only"),
    ("convert", ["--src", "torch"], "the following arguments are required: --dst"),
    # ---- python -m vxl_jax.eval
    ("eval", ["--annotations", "niah.json", "--videos", "videos", "--out", "o"], "required: --benchmark"),
    ("eval", ["--benchmark", "bogus", "--annotations", "niah.json", "--videos", "videos", "--out", "o"],
     "invalid choice"),
    ("eval", ["--benchmark", "niah", "--annotations", "niah.json", "--videos", "nowhere", "--out", "o"],
     "videos folder not found"),
    ("eval", ["--benchmark", "niah", "--annotations", "missing.json", "--videos", "videos", "--out", "o"],
     "annotation file not found"),
    ("eval", ["--benchmark", "niah", "--annotations", "bad.json", "--videos", "videos", "--out", "o"], "bad.json"),
    ("eval", ["--benchmark", "niah", "--annotations", "niah_bad_answer.json", "--videos", "videos", "--out", "o"],
     "is not a letter"),
    ("eval", ["--benchmark", "niah", "--annotations", "niah.json", "--videos", "videos", "--out", "o",
              "--frames", "0"], "--frames must be >= 1"),
    ("eval", ["--benchmark", "niah", "--annotations", "niah.json", "--videos", "videos", "--out", "o",
              "--fps", "-1"], "--fps must be > 0"),
    ("eval", ["--benchmark", "niah", "--annotations", "niah.json", "--videos", "videos", "--out", "o",
              "--ratio", "7"], "does not divide"),
    ("eval", ["--benchmark", "niah", "--annotations", "niah.json", "--videos", "videos", "--out", "o",
              "--max_new_tokens", "0"], "--max-new-tokens must be >= 1"),
    ("eval", ["--benchmark", "niah", "--annotations", "niah.json", "--videos", "videos", "--out", "notes.txt"],
     "is a file"),
    ("eval", ["--benchmark", "niah", "--annotations", "niah.json", "--videos", "videos", "--out", "o",
              "--model", "nowhere"], "checkpoint folder not found"),
    ("eval", ["--benchmark", "niah", "--annotations", "niah.json", "--videos", "videos", "--out", "o"],
     "2 of 2 videos not found under videos: missing.mp4, gone.mp4"),
]


def _call(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's usage errors
        return e.code


@pytest.mark.parametrize("entry,argv,expected", CASES, ids=[f"{i:02d}-{c[0]}" for i, c in enumerate(CASES)])
def test_bad_input(entry, argv, expected, work, monkeypatch, capsys):
    monkeypatch.chdir(work)
    argv = [*QUICK, *argv] if entry == "infer" else argv
    before = _tree(work)
    capsys.readouterr()
    code = _call(MAINS[entry], argv)
    out, err = capsys.readouterr()
    lines = err.strip("\n").splitlines()
    assert code == 2, (code, out, err)
    assert out == "" and len(lines) == 1, err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err
    assert _tree(work) == before, "the command wrote something"


def test_the_table_covers_every_entry_point():
    assert len(CASES) >= 40 and {c[0] for c in CASES} == set(MAINS)


# ---- the API's side of the table: typed errors, one line each, nothing computed


def test_nan_or_inf_pixels_are_refused(demo_vx):
    v = demo_vx.cfg.vision
    px = np.zeros((2, v.num_channels, v.image_size, v.image_size), np.float32)
    px[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    ids = np.array([1, 5, -200, 7], np.int32)
    for call in (lambda: demo_vx.prefill(ids, px), lambda: demo_vx.generate(ids, px, max_new_tokens=1),
                 lambda: demo_vx.session(ids[:2]).add_frames(px)):
        with pytest.raises(ValueError, match="pixel_values has 1 NaN and 2 infinite values") as e:
            call()
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"pixel_values\[1\] has 1 NaN"):
        demo_vx.generate([ids, ids], [None, px[:1]], max_new_tokens=1)


def test_session_file_of_another_ratio_or_model_is_refused(demo_vx, tmp_path):
    from vxl_jax.infer.memory_file import MemoryMismatchError, read_memory_file, save_memory

    s = demo_vx.session(np.array([1, 5, 6], np.int32), ratio=8)
    s.save(tmp_path / "s.session")
    with pytest.raises(ValueError, match="made with ratio 8, not 4"):
        demo_vx.load_session(tmp_path / "s.session", ratio=4)
    kv, meta, arrays = read_memory_file(tmp_path / "s.session", demo_vx.cfg)
    save_memory(tmp_path / "other.session", kv, demo_vx.cfg, extra=meta["extra"], fingerprint="0" * 32,
                tensors=arrays, meta={"session": meta["session"]})
    with pytest.raises(MemoryMismatchError, match=f"fingerprint {'0' * 32}, this model's is {demo_vx.fingerprint()}"):
        demo_vx.load_session(tmp_path / "other.session")


@pytest.mark.parametrize("size,extra", [((64, 64), 100), ((48, 64), 0)])
def test_raw_stream_that_stops_mid_frame_or_has_another_size_says_so(tmp_path, size, extra):
    """A producer that stopped mid-frame (extra bytes), or frames of another size than --live-size (2 frames of
    64x64 read as 48x64 leave a remainder): the whole frames are used and the remainder is named."""
    from vxl_jax.media.video import read_raw_frames

    p = tmp_path / "s.rgb"
    p.write_bytes(bytes(64 * 64 * 3 * 2 + extra))
    said = []
    frames = list(read_raw_frames(p, *size, on_partial=said.append))
    whole = (64 * 64 * 3 * 2 + extra) // (size[0] * size[1] * 3)
    assert len(frames) == whole and len(said) == 1
    assert f"into frame {whole + 1}" in said[0] and "--live-size" in said[0]
    with pytest.warns(UserWarning, match="not a multiple"):
        list(read_raw_frames(p, *size))
    p.write_bytes(bytes(64 * 64 * 3 * 2))
    said.clear()
    assert len(list(read_raw_frames(p, 64, 64, on_partial=said.append))) == 2 and said == []


def test_mp4_cut_short_uses_the_frames_that_decode(tmp_path):
    """An mp4 with its index at the front, cut at 50 %: decord refuses it, PyAV decodes its first frames; those
    are used (the right frames: their drawn counters), with a warning naming how many."""
    import av

    from vxl_jax.media.video import VideoStream, load_video, read_counter, sample_frame

    path = tmp_path / "cut.mp4"
    with av.open(str(tmp_path / "full.mp4"), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("mpeg4", rate=24)
        s.height, s.width, s.pix_fmt, s.bit_rate = 96, 160, "yuv420p", 2_000_000
        for i in range(48):
            for pk in s.encode(av.VideoFrame.from_ndarray(sample_frame(i, 48, (160, 96)), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    data = (tmp_path / "full.mp4").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=r"cut short .*using the (\d+) frames that can be decoded"):
        frames, info = load_video(path, 6)
    n = info["total_frames"]
    assert 6 <= n < 48 and [read_counter(f) for f in frames] == info["indices"]
    with pytest.warns(UserWarning, match="cut short"):
        stream = VideoStream(path, fps=24, batch=4)
    chunks = list(stream)
    assert sum(map(len, chunks)) == n and [read_counter(f) for c in chunks for f in c] == list(range(n))
