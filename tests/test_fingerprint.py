"""The whole-model fingerprint (vxl_jax/convert/fingerprint.py): every parameter counts, a float32 and a bfloat16
load of one folder agree, converted folders (both directions) and exports store it, folders without it get it
computed and cached, and a memory from a model that differs in one layer's v_proj is refused (API and CLI)."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from vxl_jax.cli import infer as infer_cli
from vxl_jax.convert import export_torch
from vxl_jax.convert import convert as convert_torch
from vxl_jax.convert import fingerprint as F
from vxl_jax.convert.folder import save_converted
from vxl_jax.infer.api import VideoXL
from vxl_jax.infer.memory_file import MemoryMismatchError
from vxl_jax.media.video import write_sample_video
from vxl_jax.text.tokenizer import build_tiny_tokenizer


def _variant(vx, path: tuple, index, delta: float):
    """A copy of ``vx``'s model with ``delta`` added to ``param[index]`` (the original left as it is)."""
    graphdef, state = nnx.split(vx.model)
    pure = jax.tree.map(np.array, nnx.to_pure_dict(state))
    node = pure
    for k in path[:-1]:
        node = node[k]
    node[path[-1]][index] += delta
    fresh = jax.tree.map(lambda x: x, state)
    nnx.replace_by_pure_dict(fresh, pure)
    return nnx.merge(graphdef, fresh)


@pytest.fixture(scope="module")
def folders(demo_vx, tmp_path_factory):
    """A: the embedded model; B: A with layer 1's v_proj changed (one value); C: layer 0's k_proj changed."""
    d = tmp_path_factory.mktemp("fp")
    tok, gen = build_tiny_tokenizer(), dict(demo_vx.generation_config)
    save_converted(d / "A", demo_vx.model, tok, gen)
    save_converted(d / "B", _variant(demo_vx, ("lm", "layers", "attn", "v", "kernel"), (1, 3, 0, 2), 1e-3), tok, gen)
    save_converted(d / "C", _variant(demo_vx, ("lm", "layers", "attn", "k", "kernel"), (0, 0, 1, 0), 1e-3), tok, gen)
    write_sample_video(d / "clip.mp4", num_frames=12, size=(160, 96))
    return d


def test_one_layer_changes_the_fingerprint_and_loads_agree(folders, demo_vx):
    fa, fb, fc = (F.read_record(folders / n) for n in "ABC")
    assert len({fa, fb, fc}) == 3 and all(len(f) == F.DIGITS for f in (fa, fb, fc))
    assert fa == demo_vx.fingerprint() == F.of_model(demo_vx.model)  # in memory == saved (same dtype)
    a32, a16 = VideoXL.load(folders / "A"), VideoXL.load(folders / "A", dtype="bfloat16")
    assert a32.fingerprint() == a16.fingerprint() == fa  # the stored values, not the load dtype
    assert F.of_model(a16.model) != fa  # (the bf16 values in memory are other values)
    assert F.of_folder(folders / "B", a32.cfg) == fb  # the record is what the stored values hash to


def test_memory_of_a_layer_changed_model_is_refused(folders, tmp_path):
    a, b = VideoXL.load(folders / "A"), VideoXL.load(folders / "B")
    ids = np.array([1, 5, 6, -200, 7, 8], np.int32)
    frames = np.random.default_rng(0).integers(0, 255, (6, 64, 64, 3), np.uint8)
    res = a.prefill(ids, frames, ratio=8)
    a.save_memory(tmp_path / "a.mem", res.video_memory)
    s = a.session(ids[:3], ratio=8).add_frames(frames)
    s.save(tmp_path / "a.session")
    for path in ("a.mem", "a.session"):
        with pytest.raises(MemoryMismatchError) as e:
            b.load_memory(tmp_path / path)
        msg = str(e.value)
        assert a.fingerprint() in msg and b.fingerprint() in msg and "\n" not in msg
    with pytest.raises(MemoryMismatchError):
        b.load_session(tmp_path / "a.session")
    assert a.load_memory(tmp_path / "a.mem").sizes == res.video_memory.sizes


def test_cli_refuses_a_memory_of_another_model(folders, tmp_path, capsys):
    mem = tmp_path / "a.mem"
    common = ["--question", "What?", "--max-new-tokens", "2", "--quiet", "--compile-cache", "none"]
    assert infer_cli.main(["--model", str(folders / "A"), "--video", str(folders / "clip.mp4"), "--frames", "6",
                           "--save-memory", str(mem), *common]) == 0
    capsys.readouterr()
    assert infer_cli.main(["--model", str(folders / "C"), "--memory", str(mem), *common]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "made by another model" in err
    assert F.read_record(folders / "A") in err and F.read_record(folders / "C") in err


def test_folder_without_a_record_is_hashed_once_and_cached(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bare = tmp_path / "bare"
    save_converted(bare, VideoXL.load(folders / "B").model)
    expected = F.read_record(bare)
    os.unlink(bare / F.FINGERPRINT_NAME)
    assert VideoXL.load(bare).fingerprint() == expected
    cached = list((tmp_path / "cache" / "vxl_jax" / "fingerprints").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["fingerprint"] == expected
    monkeypatch.setattr(F, "of_folder", lambda *a: pytest.fail("computed again"))
    assert VideoXL.load(bare, dtype="bfloat16").fingerprint() == expected


def test_converter_writes_it_both_ways_and_a_round_trip_keeps_it(folders, tmp_path):
    fa = F.read_record(folders / "A")
    summary = export_torch(str(folders / "A"), str(tmp_path / "torch"), progress=False)
    assert summary["fingerprint"] == fa == F.read_record(tmp_path / "torch")
    back = convert_torch(str(tmp_path / "torch"), str(tmp_path / "back"), progress=False)
    assert back["fingerprint"] == fa == F.read_record(tmp_path / "back")
    half = export_torch(str(folders / "A"), str(tmp_path / "torch16"), dtype="bfloat16", progress=False)
    assert half["fingerprint"] != fa
    back16 = convert_torch(str(tmp_path / "torch16"), str(tmp_path / "back16"), progress=False)
    assert back16["dtype"] == "bfloat16" and back16["fingerprint"] == half["fingerprint"]
