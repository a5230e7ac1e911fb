"""convert_weights: tiny released-layout checkpoints built from transformers' torch modules."""

import json
import os
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from tests.torch_ref import (clip_config_dict, hf_config, released_tensors, tiny_clip, tiny_qwen2, write_checkpoint,
                             write_released)
from vxl_jax.convert import ConversionError, convert, export_torch
from vxl_jax.convert.names import VISION_PREFIX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def torch_models():
    return tiny_qwen2(seed=0), tiny_clip(seed=1)


@pytest.fixture(scope="module")
def released(tmp_path_factory, torch_models):
    qwen, clip = torch_models
    src = str(tmp_path_factory.mktemp("released") / "hf")
    tensors = write_released(src, qwen, clip)
    dst = str(tmp_path_factory.mktemp("conv") / "out")
    summary = convert(src, dst, progress=False)
    return src, dst, tensors, summary


def _params(folder):
    """Every converted parameter as numpy, by path (read back through Orbax)."""
    from flax import nnx

    from vxl_jax.convert.folder import load_converted
    from vxl_jax.convert.names import flatten

    _, model, _, _ = load_converted(folder)
    return {p: np.asarray(v) for p, v in flatten(nnx.to_pure_dict(nnx.state(model))).items()}


def _no_leftovers(parent):
    return [f for f in os.listdir(parent) if ".tmp-" in f]


def test_converted_logits_equal_torch(released, torch_models):
    from vxl_jax.infer.api import VideoXL

    src, dst, tensors, summary = released
    qwen, clip = torch_models
    assert summary["source_tensors"] == len(tensors) and summary["dtype"] == "float32"
    assert summary["vision_config"].endswith("vision_tower_config.json")
    assert sorted(os.listdir(dst)) == ["conversion.json", "fingerprint.json", "generation_config.json", "params",
                                    "vxl_config.json"]
    vx = VideoXL.load(dst, "float32")
    ids = np.random.default_rng(1).integers(0, 256, size=60)
    with torch.no_grad():
        ref = qwen(torch.from_numpy(ids[None])).logits[0].numpy()
    np.testing.assert_allclose(vx.prefill(ids, None).logits, ref, atol=1e-4, rtol=0)
    assert vx.generation_config["eos_token_id"] == 2
    # the vision tower came through too
    px = np.random.default_rng(2).normal(size=(1, 3, 336, 336)).astype(np.float32)
    with torch.no_grad():
        ref_v = clip(pixel_values=torch.from_numpy(px), output_hidden_states=True).hidden_states[-2][:, 1:].numpy()
    np.testing.assert_allclose(np.asarray(vx.model.vision_features(px)), ref_v, atol=1e-5, rtol=0)


def test_round_trip_bit_exact(released, tmp_path):
    src, dst, tensors, _ = released
    back = str(tmp_path / "back")
    export_torch(dst, back, progress=False)
    got = load_file(os.path.join(back, "model.safetensors"))
    assert set(got) == set(tensors)
    for n, t in tensors.items():
        assert got[n].dtype == t.dtype and np.array_equal(got[n], t), n
    from vxl_jax.config import VideoXLConfig, from_hf_config

    cfg = VideoXLConfig.from_json(os.path.join(dst, "vxl_config.json"))
    again = from_hf_config(os.path.join(back, "config.json"), vision=os.path.join(back, "vision_tower_config.json"))
    assert again == cfg
    # and the exported folder converts again to identical parameters
    dst2 = str(tmp_path / "again")
    convert(back, dst2, progress=False)
    a, b = _params(dst), _params(dst2)
    assert all(np.array_equal(a[p], b[p]) for p in a)


def test_export_sharded(released, tmp_path):
    _, dst, tensors, _ = released
    back = str(tmp_path / "sharded")
    summary = export_torch(dst, back, max_shard_bytes=200_000, progress=False)
    assert len(summary["shards"]) > 1
    index = json.load(open(os.path.join(back, "model.safetensors.index.json")))
    assert set(index["weight_map"]) == set(tensors)
    got = {}
    for s in summary["shards"]:
        got.update(load_file(os.path.join(back, s)))
    assert all(np.array_equal(got[n], tensors[n]) for n in tensors)


@pytest.mark.parametrize("fmt,shards", [("safetensors", 3), ("bin", 1), ("bin", 2)])
def test_other_layouts_give_the_same_params(released, tmp_path, fmt, shards):
    _, dst, tensors, _ = released
    src = str(tmp_path / "src")
    qwen_cfg = json.load(open(os.path.join(released[0], "config.json")))
    vis = json.load(open(os.path.join(released[0], "vision_tower_config.json")))
    # CLIP names as transformers 5 saves them (no prefix) and as v4 does (vision_model.) also work
    renamed = {(n.replace(VISION_PREFIX, "vision_model.") if fmt == "bin" else n): t for n, t in tensors.items()}
    write_checkpoint(src, renamed, qwen_cfg, vis, fmt=fmt, shards=shards)
    out = str(tmp_path / "out")
    summary = convert(src, out, progress=False)
    assert summary["source_tensors"] == len(tensors)
    a, b = _params(dst), _params(out)
    assert a.keys() == b.keys() and all(np.array_equal(a[p], b[p]) for p in a)


def test_bfloat16_source_and_init_beacon(torch_models, tmp_path):
    qwen, clip = torch_models
    tensors = released_tensors(qwen, clip, beacon=False)
    bf = {n: t.astype(ml_dtypes.bfloat16) for n, t in tensors.items()}
    src = write_checkpoint(str(tmp_path / "plain"), bf, hf_config(qwen, clip), clip_config_dict(clip))
    with pytest.raises(ConversionError, match="no beacon weights.*--init-beacon"):
        convert(src, str(tmp_path / "refused"), progress=False)
    assert not os.path.exists(tmp_path / "refused") and not _no_leftovers(tmp_path)
    out = str(tmp_path / "init")
    summary = convert(src, out, init_beacon=True, progress=False)
    assert summary["dtype"] == "bfloat16" and summary["init_beacon"]
    from vxl_jax.convert.folder import load_converted

    cfg, model, _, _ = load_converted(out, dtype="bfloat16")
    attn = model.lm.layers.attn
    for x in "qkv":
        assert np.array_equal(np.asarray(getattr(attn, f"beacon_{x}").kernel[...]),
                              np.asarray(getattr(attn, x).kernel[...]))
        assert np.array_equal(np.asarray(getattr(attn, f"beacon_{x}").bias[...]),
                              np.asarray(getattr(attn, x).bias[...]))
    eos = cfg.lm.eos_ids[0]
    assert np.array_equal(np.asarray(model.lm.beacon_embed[...])[0], np.asarray(model.lm.embed[...])[eos])
    assert model.lm.embed[...].dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(np.asarray(model.lm.embed[...]), bf["model.embed_tokens.weight"])


def _write_variant(folder, tensors, qwen, clip, **kw):
    return write_checkpoint(folder, tensors, hf_config(qwen, clip), clip_config_dict(clip), **kw)


def test_bad_inputs_give_one_clear_error_and_write_nothing(torch_models, tmp_path):
    qwen, clip = torch_models
    base = released_tensors(qwen, clip)
    cases = {}

    cases["missing folder"] = (str(tmp_path / "does_not_exist"), "source folder not found")

    f = _write_variant(str(tmp_path / "shard"), base, qwen, clip, shards=3)
    os.remove(os.path.join(f, "model-00002-of-00003.safetensors"))
    cases["missing shard"] = (f, r"shard file\(s\) named in the index are missing: \['model-00002-of-00003")

    f = _write_variant(str(tmp_path / "trunc"), base, qwen, clip)
    p = os.path.join(f, "model.safetensors")
    with open(p, "r+b") as fh:
        fh.truncate(os.path.getsize(p) - 1000)
    cases["truncated"] = (f, "truncated safetensors file")

    t = dict(base)
    t["model.layers.1.mlp.up_proj.weight"] = np.zeros((127, 64), np.float32)
    cases["wrong shape"] = (_write_variant(str(tmp_path / "shape"), t, qwen, clip),
                            r"model.layers.1.mlp.up_proj.weight: shape \[127, 64\], expected \[128, 64\]")

    t = dict(base)
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(8, np.float32)
    cases["extra tensor"] = (_write_variant(str(tmp_path / "extra"), t, qwen, clip),
                             "1 unexpected tensor.*rotary_emb.inv_freq")

    t = {n: v for n, v in base.items() if n != "model.mm_projector.2.bias"}
    cases["missing tensor"] = (_write_variant(str(tmp_path / "missing"), t, qwen, clip),
                               "1 missing tensor.*model.mm_projector.2.bias")

    t = {n: v for n, v in base.items() if "beacon" not in n}
    cases["no beacon"] = (_write_variant(str(tmp_path / "nobeacon"), t, qwen, clip), "--init-beacon")

    f = _write_variant(str(tmp_path / "novis"), base, qwen, clip)
    os.remove(os.path.join(f, "vision_tower_config.json"))
    cases["no fitting vision config"] = (f, "(?s)no CLIP vision config fits.*--vision-config")

    out_parent = tmp_path / "outputs"
    out_parent.mkdir()
    for name, (src, match) in cases.items():
        dst = out_parent / name.replace(" ", "_")
        with pytest.raises(ConversionError, match=match) as info:
            convert(src, str(dst), progress=False)
        assert "\n" not in str(info.value) or "cannot convert" in str(info.value) or "Tried" in str(info.value)
        assert not dst.exists(), name
    assert os.listdir(out_parent) == []

    # the vision config given explicitly makes the last one work
    vis = tmp_path / "clip.json"
    vis.write_text(json.dumps(clip_config_dict(clip)))
    novis = cases["no fitting vision config"][0]
    s = convert(novis, str(out_parent / "ok"), vision_config=str(vis), progress=False)
    assert s["vision_config"] == str(vis)
    # ... and so does the folder named by mm_vision_tower (relative to the checkpoint)
    tower = os.path.join(novis, json.load(open(os.path.join(novis, "config.json")))["mm_vision_tower"])
    os.makedirs(tower)
    shutil.copy(vis, os.path.join(tower, "config.json"))
    s = convert(novis, str(out_parent / "ok2"), progress=False)
    assert s["vision_config"] == os.path.join(tower, "config.json")
    # an LM config problem is reported as such
    t = json.load(open(os.path.join(novis, "config.json")))
    t["some_new_field"] = 1
    json.dump(t, open(os.path.join(novis, "config.json"), "w"))
    with pytest.raises(ConversionError, match="config.json: .*some_new_field"):
        convert(novis, str(out_parent / "bad_cfg"), progress=False)
    assert not (out_parent / "bad_cfg").exists()


def test_cli_subprocess_and_exit_codes(released, tmp_path):
    src = released[0]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "convert_weights.py"), "--src", src, "--dst", str(out),
                        "--dtype", "bfloat16", "--quiet"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dtype"] == "bfloat16"
    assert json.load(open(out / "vxl_config.json"))["runtime"]["param_dtype"] == "bfloat16"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "convert_weights.py"), "--src", str(tmp_path / "nope"),
                        "--dst", str(tmp_path / "x")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 2 and "source folder not found" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


def test_load_raw_folder_is_a_clear_error(released):
    from vxl_jax.infer.api import VideoXL

    with pytest.raises(ConversionError, match="convert_weights.py"):
        VideoXL.load(released[0])
    with pytest.raises(ConversionError, match="already a converted folder"):
        convert(released[1], released[1] + "_again", progress=False)


def test_row_blocked_conversion_and_export(released, tmp_path, monkeypatch):
    """Embeddings / lm_head go through in row blocks for big models: force tiny blocks, same result."""
    import importlib

    C = importlib.import_module("vxl_jax.convert.convert")  # (the package re-exports a function of that name)

    src, dst, tensors, _ = released
    monkeypatch.setattr(C, "BLOCK_BYTES", 5000)  # 256x64 fp32 tables -> blocks of 19 rows
    out = str(tmp_path / "blocked")
    convert(src, out, progress=False)
    chunks = json.load(open(os.path.join(out, "params", "lm.lm_head", ".zarray")))["chunks"]
    assert chunks == [64, 19]
    a, b = _params(dst), _params(out)
    assert all(np.array_equal(a[p], b[p]) for p in a)
    back = str(tmp_path / "back")
    export_torch(out, back, progress=False)
    got = load_file(os.path.join(back, "model.safetensors"))
    assert all(np.array_equal(got[n], tensors[n]) for n in tensors)


def _cli(*args, cwd, script="convert_weights.py"):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args), "--quiet"],
                          capture_output=True, text=True, env=env, cwd=cwd)


def test_cli_relative_paths_and_unexpected_errors_are_one_line(tmp_path, demo_vx):
    """--to-torch with relative --src/--dst on a training export (an OCDBT Orbax checkpoint, which Orbax only
    reads from an absolute path: the CLI resolves them); a failure outside the converter's own checks is still
    one line and exit 2, never a traceback."""
    from vxl_jax.convert.folder import save_converted

    work = tmp_path / "cwd"
    vx = demo_vx
    save_converted(work / "runs" / "export", vx.model, vx.tokenizer)  # what train.py writes
    r = _cli("--to-torch", "--src", "runs/export", "--dst", "torch_out", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and (work / "torch_out" / "model.safetensors").is_file()
    assert json.loads(r.stdout)["direction"] == "jax->torch"
    (work / "a_file").write_text("not a folder")
    r = _cli("--to-torch", "--src", "runs/export", "--dst", "a_file/out", cwd=work)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
