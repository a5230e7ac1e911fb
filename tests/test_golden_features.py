"""The golden tiny Video-XL (original PyTorch code): converted, it reproduces logits and visual features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file


@pytest.fixture(scope="module")
def golden(golden_dir, golden_converted, golden_vx):
    """The run's one conversion of the golden checkpoint (tests/conftest.py: no dtype given), loaded in float32."""
    summary = golden_converted[1]
    assert summary["source_tensors"] == 83 and summary["parameters"] == 171888
    assert summary["vision_config"].endswith("vision_tower_config.json")
    return golden_vx, load_file(str(golden_dir / "cases.safetensors"))


def test_text_logits_full(golden):
    vx, cases = golden
    logits = vx.prefill(cases["text.input_ids"][0], None).logits
    ref = cases["text.logits_full"]
    assert logits.shape == ref.shape == (37, 800)
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)


def test_vision_projector_and_pooled_features(golden):
    vx, cases = golden
    m = vx.model
    pixels = cases["video.frames_u8"].astype(np.float32) / 64.0 - 2.0  # [23, 3, 336, 336]
    vis = np.asarray(jax.jit(lambda m, p: m.vision_features(p))(m, jnp.asarray(pixels[:2])))
    np.testing.assert_allclose(vis, cases["video.vision_tower_out_frames01"], atol=1e-5, rtol=0)
    proj = np.asarray(jax.jit(lambda m, x: m.projector(x))(m, jnp.asarray(vis)))
    np.testing.assert_allclose(proj, cases["video.projector_out_frames01"], atol=1e-5, rtol=0)
    feats = np.asarray(jax.jit(lambda m, p: m.encode_frames(p))(m, jnp.asarray(pixels)))
    assert feats.shape == (23, 144, 48)
    np.testing.assert_allclose(feats.reshape(-1, 48), cases["video.image_features"], atol=1e-5, rtol=0)
