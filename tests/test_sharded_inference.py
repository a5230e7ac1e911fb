"""Sharded inference (``VideoXL(..., mesh=...)``) on the fake 8-device CPU mesh equals one device.

Meshes: tensor 2, tensor 4, data 2 x tensor 2 (``inference`` rules: heads / MLP / vocab over tensor,
KV memory over KV heads, batch over data). Per mesh: prefill logits within 1e-5 of the single-device
run, memory K/V within 1e-5, the same greedy ids (step logits within 1e-5); the embedded tiny
default model (``demo.default_model``) and the golden checkpoint of the original (``VideoXL.load``).
Not vacuous: parameters, the memory after prefill and the compiled executables' shardings are
checked to be split over devices where the rules allow it, and the compiled window scan's FLOPs per
device (XLA cost analysis) to be well below the single-device program's.
"""

import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vxl_jax.runtime import sharding as sh
from vxl_jax.infer.api import VideoXL
from vxl_jax.infer.demo import default_model
from vxl_jax.beacon.memory import KVMemory
from vxl_jax.model import random_model

MESHES = [{"tensor": 2}, {"tensor": 4}, {"data": 2, "tensor": 2}]
MESH_IDS = ["tensor2", "tensor4", "data2xtensor2"]
# the embedded model on tensor 4 and data 2 x tensor 2 repeats what tensor 2 and the golden cases on those meshes
# check: `slow`, run by CI's Python 3.11 leg only
DEFAULT_MODEL_MESHES = [pytest.param(m, id=i, marks=[pytest.mark.slow] if k else []) for k, (m, i) in
                        enumerate(zip(MESHES, MESH_IDS))]
ATOL = 1e-5


def _mesh_sizes(vx):
    return {k: v for k, v in vx.mesh.shape.items() if v > 1}


def _assert_params_sharded(vx, mesh_sizes):
    """Every placed parameter lives on the mesh; q/k/v/o and MLP kernels are split over ``tensor``."""
    state = vx.engine.state
    n_split = 0
    for path, var in sh.iter_params(state):
        arr = var[...]
        assert arr.sharding.mesh.shape == vx.mesh.shape, path
        if not arr.sharding.is_fully_replicated:
            n_split += 1
            assert arr.addressable_shards[0].data.size < arr.size, path
    assert n_split >= 10, n_split
    layers = state["lm"]["layers"]
    for name in ("q", "k", "v"):  # [L, D, H, Dh]: heads over tensor (kv heads only when they divide)
        spec = layers["attn"][name]["kernel"][...].sharding.spec
        if name == "q" or vx.cfg.lm.num_kv_heads % mesh_sizes["tensor"] == 0:
            assert spec == P(None, None, "tensor"), (name, spec)
    assert "tensor" in str(layers["mlp"]["gate"]["kernel"][...].sharding.spec)


def _assert_memory_placement(vx, mem: KVMemory):
    spec = mem.k.sharding.spec
    kv_split = vx.cfg.lm.num_kv_heads % vx.mesh.shape["tensor"] == 0
    want = sh.logical_to_spec(sh.MEMORY_AXES, mem.k.shape, "inference", vx.mesh)
    assert spec == want and mem.v.sharding.spec == want, (spec, want)
    if kv_split:
        assert spec == P(None, None, None, "tensor"), spec
        assert mem.k.addressable_shards[0].data.shape[3] == mem.k.shape[3] // vx.mesh.shape["tensor"]


def _assert_compiled_sharded(vx):
    """Each compiled step takes split parameters (not replicated copies)."""
    assert vx.engine._compiled
    for key, exe in vx.engine._compiled.items():
        ins = jax.tree.leaves(exe.input_shardings)
        assert any(not s.is_fully_replicated for s in ins), key[0]


def _window_flops(vx) -> float:
    """FLOPs per device of the compiled window scan (XLA's cost analysis of the partitioned program)."""
    flops = []
    for key, exe in vx.engine._compiled.items():
        if key[0] == "windows":
            cost = exe.cost_analysis()
            flops.append((cost[0] if isinstance(cost, list) else cost)["flops"])
    assert flops
    return max(flops)


# ------------------------------------------------------------------ embedded tiny default model


@pytest.fixture(scope="module")
def tiny_ref(prompt):
    ids, px = prompt
    vx = default_model()
    res = vx.prefill(ids, px, ratio=2)
    new, step_logits = vx.generate(ids, px, ratio=2, max_new_tokens=8, return_logits=True)
    return res, new, step_logits, _window_flops(vx)


@pytest.mark.parametrize("mesh", DEFAULT_MODEL_MESHES)
def test_default_model_sharded_equals_single_device(prompt, tiny_ref, mesh):
    ids, px = prompt
    ref, ref_new, ref_step, ref_flops = tiny_ref
    vx = default_model(mesh=mesh)
    assert _mesh_sizes(vx) == mesh
    _assert_params_sharded(vx, mesh)
    res = vx.prefill(ids, px, ratio=2)
    np.testing.assert_allclose(res.logits, ref.logits, atol=ATOL, rtol=0)
    assert res.sizes == ref.sizes
    n = res.sizes["total"]
    for got, want in ((res.memory.k, ref.memory.k), (res.memory.v, ref.memory.v)):
        np.testing.assert_allclose(np.asarray(got)[:, :, :n], np.asarray(want)[:, :, :n], atol=ATOL, rtol=0)
    _assert_memory_placement(vx, res.memory)
    out = vx.generate(ids, px, ratio=2, max_new_tokens=8, return_logits=True, return_output=True)
    np.testing.assert_array_equal(out.ids, ref_new)
    np.testing.assert_allclose(out.step_logits, ref_step, atol=ATOL, rtol=0)
    _assert_memory_placement(vx, out.memory)
    _assert_compiled_sharded(vx)
    # the work is split, not repeated: each device runs a fraction of the single-device window scan
    assert _window_flops(vx) < 0.8 * ref_flops, (_window_flops(vx), ref_flops)


def test_kv_memory_split_over_kv_heads_with_tensor4(tiny_cfg, prompt):
    """With 4 KV heads on tensor=4 the memory itself is split (1 KV head per device), and the answer is unchanged."""
    ids, px = prompt
    lm = dataclasses.replace(tiny_cfg.lm, num_kv_heads=4)
    cfg = dataclasses.replace(tiny_cfg, lm=lm)
    ref = VideoXL(cfg, random_model(cfg, seed=5, std=0.2))
    vx = VideoXL(cfg, random_model(cfg, seed=5, std=0.2), mesh={"tensor": 4})
    want, got = ref.prefill(ids, px, ratio=4), vx.prefill(ids, px, ratio=4)
    np.testing.assert_allclose(got.logits, want.logits, atol=ATOL, rtol=0)
    assert got.memory.k.sharding.spec == P(None, None, None, "tensor")
    assert got.memory.k.addressable_shards[0].data.shape[3] == 1
    np.testing.assert_array_equal(vx.generate(ids, px, ratio=4, max_new_tokens=6),
                                  ref.generate(ids, px, ratio=4, max_new_tokens=6))


def test_batch_split_over_data(tiny_cfg):
    """A batch of 2 prompts on data=2 x tensor=2: each data replica holds one row of the memory."""
    model = random_model(tiny_cfg, seed=7, std=0.2)
    ref = VideoXL(tiny_cfg, model)
    vx = VideoXL(tiny_cfg, model, mesh={"data": 2, "tensor": 2})
    lm = tiny_cfg.lm
    rng = np.random.default_rng(1)
    ids = jax.numpy.asarray(rng.integers(3, lm.vocab_size, (2, 16)), jax.numpy.int32)
    n = jax.numpy.asarray([16, 11], jax.numpy.int32)
    outs = []
    for v in (ref, vx):
        mem = KVMemory.empty(lm.num_layers, 2, 256, lm.num_kv_heads, lm.head_dim, np.float32)
        outs.append(v.engine.text(mem, ids, n, kind="text"))
    (want_logits, want_mem), (logits, mem) = outs
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want_logits), atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(mem.k), np.asarray(want_mem.k), atol=ATOL, rtol=0)
    assert mem.k.sharding.spec == P(None, "data", None, "tensor")
    assert mem.length.sharding.spec == P("data")
    assert mem.k.addressable_shards[0].data.shape[1] == 1


def test_mesh_argument_forms():
    assert sh.parse_mesh("tensor=4") == {"tensor": 4}
    assert sh.parse_mesh("data=2, tensor=4") == {"data": 2, "tensor": 4}
    for bad in ("tensr=2", "tensor", "tensor=x", ""):
        with pytest.raises(ValueError):
            sh.parse_mesh(bad)
    mesh = sh.inference_mesh({"tensor": 4})
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 4} and mesh.devices.size == 4
    assert dict(sh.inference_mesh("data=2,tensor=-1").shape) == {"data": 2, "fsdp": 1, "tensor": 4}
    assert sh.inference_mesh(mesh) is mesh and sh.inference_mesh(None) is None
    with pytest.raises(ValueError, match="needs 16 devices"):
        sh.inference_mesh({"tensor": 16})
    with pytest.raises(ValueError, match="unknown axes"):
        sh.inference_mesh({"model": 2})


# ------------------------------------------------------------------ golden checkpoint of the original


@pytest.fixture(scope="module")
def golden_sharded(golden_dir, golden_converted, golden_vx):
    """(the run's converted golden folder, the original's outputs, that folder loaded on one device in float32)."""
    from safetensors.numpy import load_file

    return golden_converted[0], load_file(str(golden_dir / "cases.safetensors")), golden_vx


GOLDEN = [({"tensor": 2}, 2), ({"tensor": 4}, 16), ({"data": 2, "tensor": 2}, 16)]


@pytest.mark.parametrize("mesh,ratio", GOLDEN, ids=[f"{i}-r{r}" for i, (_, r) in zip(MESH_IDS, GOLDEN)])
def test_golden_video_case_sharded(golden_sharded, mesh, ratio):
    path, C, single = golden_sharded
    ids, px = C["video.input_ids"][0], C["video.frames_u8"].astype(np.float32) / 64.0 - 2.0
    vx = VideoXL.load(path, dtype="float32", mesh=mesh)
    assert _mesh_sizes(vx) == mesh
    _assert_params_sharded(vx, mesh)
    want, res = single.prefill(ids, px, ratio=ratio), vx.prefill(ids, px, ratio=ratio)
    np.testing.assert_allclose(res.logits, want.logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(res.logits, C[f"video_r{ratio}.logits_forward"], atol=1e-4, rtol=0)
    assert res.sizes == want.sizes
    n = res.sizes["total"]
    np.testing.assert_allclose(np.asarray(res.memory.k)[:, :, :n], np.asarray(want.memory.k)[:, :, :n], atol=ATOL,
                               rtol=0)
    _assert_memory_placement(vx, res.memory)
    new, step_logits = vx.generate(ids, px, ratio=ratio, max_new_tokens=6, return_logits=True)
    np.testing.assert_array_equal(new, C[f"video_r{ratio}.generated_ids"])
    np.testing.assert_allclose(step_logits, C[f"video_r{ratio}.generate_step_logits"], atol=1e-4, rtol=0)
    _assert_compiled_sharded(vx)


def test_golden_image_and_text_cases_sharded(golden_sharded):
    """Anyres image features and a text-only prompt on tensor=2: the golden logits and greedy ids."""
    path, C, _ = golden_sharded
    vx = VideoXL.load(path, dtype="float32", mesh={"tensor": 2})
    feats = vx.image_features(C["image.pixels_u8"].astype(np.float32) / 64.0 - 2.0)
    np.testing.assert_allclose(feats, C["image.image_features"], atol=1e-5, rtol=0)
    ids = C["image.input_ids"][0]
    res = vx.prefill(ids, None, ratio=2, features=feats)
    np.testing.assert_allclose(res.logits, C["image_r2.logits_forward"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(vx.generate(ids, None, ratio=2, features=feats, max_new_tokens=6),
                                  C["image_r2.generated_ids"])
    text = vx.prefill(C["text.input_ids"][0], None)
    np.testing.assert_allclose(text.logits, C["text.logits_full"], atol=1e-4, rtol=0)


# ------------------------------------------------------------------ infer.py --mesh


def test_infer_cli_mesh(tmp_path, demo_vx):
    """``infer.py --mesh tensor=2`` prints the single-device API answer; a bad --mesh is one line, exit 2."""
    import os
    import pathlib
    import subprocess
    import sys

    from vxl_jax.media.preprocess import preprocess_frames
    from vxl_jax.text.prompt import question_ids
    from vxl_jax.media.video import load_video, write_sample_video

    root = pathlib.Path(__file__).resolve().parents[1]
    write_sample_video(tmp_path / "clip.mp4", num_frames=12, size=(160, 96))
    vx = demo_vx
    frames, _ = load_video(tmp_path / "clip.mp4", 12)
    question = "What is in the video?"
    want = vx.tokenizer.decode(vx.generate(question_ids(question, vx.tokenizer), preprocess_frames(frames), ratio=8,
                                           max_new_tokens=4), skip_special_tokens=True).strip()

    def infer(*args):
        cmd = [sys.executable, str(root / "infer.py"), "--video", "clip.mp4", "--question", question, "--frames", "12",
               "--max-new-tokens", "4", "--quiet", "--compile-cache", "none", *args]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(root)})

    r = infer("--mesh", "tensor=2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n"
    r = infer("--mesh", "tensr=2")
    assert r.returncode == 2 and "--mesh" in r.stderr and "Traceback" not in r.stderr
