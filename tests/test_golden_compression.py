"""The converted golden checkpoint reproduces the ORIGINAL implementation's compression outputs.

For every visual case of ../shared/golden (video r2/r16 with a partial last window, anyres image
r2/r16, single unpooled tile r2): post-video logits (<= 1e-4), compressed-memory sizes (exact),
memory K/V (<= 1e-5) and greedy generated ids (exact).
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from vxl_jax.beacon.memory import rotate_at


@pytest.fixture(scope="module")
def golden(golden_dir, golden_vx):
    """The converted checkpoint (float32, shared by the run: tests/conftest.py) and the original's outputs."""
    cases = load_file(str(golden_dir / "cases.safetensors"))
    kv = load_file(str(golden_dir / "memory_kv.safetensors"))
    meta = json.loads((golden_dir / "cases_meta.json").read_text())["cases"]
    return golden_vx, cases, kv, meta


def _pixels(u8):
    return u8.astype(np.float32) / 64.0 - 2.0


@pytest.mark.parametrize("ratio", [2, 16])
def test_video_case(golden, ratio):
    vx, C, KV, meta = golden
    ids, px = C["video.input_ids"][0], _pixels(C["video.frames_u8"])
    case = meta[f"video_r{ratio}"]
    res = vx.prefill(ids, px, ratio=ratio)
    np.testing.assert_allclose(res.logits, C[f"video_r{ratio}.logits_forward"], atol=1e-4, rtol=0)
    sink, beacons, text = 9, {2: 720 + 720 + 216, 16: 90 + 90 + 27}[ratio], 15
    assert res.sizes == {"prefix": sink, "beacons": beacons, "text": text, "total": sink + beacons + text}
    for layer_sizes in case["memory_after_forward"]["per_layer"]:
        assert (layer_sizes["sink"], layer_sizes["beacon"], layer_sizes["raw"]) == (sink, beacons, text)
    n = res.sizes["total"]
    for layer in range(vx.cfg.lm.num_layers):
        ref_k = KV[f"video_r{ratio}.layer{layer}.key"].transpose(1, 0, 2)  # [M, KV, Dh], before RoPE
        ref_v = KV[f"video_r{ratio}.layer{layer}.value"].transpose(1, 0, 2)
        assert ref_k.shape[0] == n
        # ours are stored rotated with their slot index: rotate the reference the same way
        ref_k = np.asarray(rotate_at(jnp.asarray(ref_k)[None, None], jnp.arange(n)[None], vx.cfg.lm.head_dim,
                                     vx.cfg.lm.rope_theta))[0, 0]
        np.testing.assert_allclose(np.asarray(res.memory.k)[layer, 0, :n], ref_k, atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.asarray(res.memory.v)[layer, 0, :n], ref_v, atol=1e-5, rtol=0)

    new, step_logits = vx.generate(ids, px, ratio=ratio, max_new_tokens=6, return_logits=True)
    np.testing.assert_array_equal(new, C[f"video_r{ratio}.generated_ids"])
    np.testing.assert_array_equal(new, case["generated_ids"])
    np.testing.assert_allclose(step_logits, C[f"video_r{ratio}.generate_step_logits"], atol=1e-4, rtol=0)
    assert vx.stats["kept_kv"] == n + 5  # the last generated token is never fed back


@pytest.mark.parametrize("ratio", [2, 16])
def test_anyres_image_case(golden, ratio):
    vx, C, _, _ = golden
    feats = vx.image_features(_pixels(C["image.pixels_u8"]))
    np.testing.assert_allclose(feats, C["image.image_features"], atol=1e-5, rtol=0)
    ids = C["image.input_ids"][0]
    res = vx.prefill(ids, None, ratio=ratio, features=feats)
    np.testing.assert_allclose(res.logits, C[f"image_r{ratio}.logits_forward"], atol=1e-4, rtol=0)
    assert res.sizes == {"prefix": 12, "beacons": 288 // ratio, "text": 10, "total": 22 + 288 // ratio}
    new = vx.generate(ids, None, ratio=ratio, features=feats, max_new_tokens=6)
    np.testing.assert_array_equal(new, C[f"image_r{ratio}.generated_ids"])


def test_single_tile_unpooled_case(golden):
    vx, C, _, _ = golden
    feats = vx.image_features(_pixels(C["image1.pixels_u8"]))
    assert feats.shape == (576, vx.cfg.lm.hidden_size)
    np.testing.assert_allclose(feats, C["image1.image_features"], atol=1e-5, rtol=0)
    ids = C["image1.input_ids"][0]
    res = vx.prefill(ids, None, ratio=2, features=feats)
    np.testing.assert_allclose(res.logits, C["image1_r2.logits_forward"], atol=1e-4, rtol=0)
    assert res.sizes == {"prefix": 6, "beacons": 288, "text": 8, "total": 302}
    np.testing.assert_array_equal(vx.generate(ids, None, ratio=2, features=feats, max_new_tokens=6),
                                  C["image1_r2.generated_ids"])


def test_text_case_through_memory(golden):
    """Text-only prefill returns logits for every position (pure causal pass)."""
    vx, C, _, _ = golden
    res = vx.prefill(C["text.input_ids"][0], None)
    np.testing.assert_allclose(res.logits, C["text.logits_full"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(res.logits[14:], C["text.logits_forward"], atol=1e-4, rtol=0)
