"""CLIP tower layer -2 patch features == transformers CLIPVisionModel hidden_states[-2][:, 1:] (fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.torch_ref import numpy_state, tiny_clip, tiny_qwen2, videoxl_config_for
from vxl_jax.convert.names import VISION_PREFIX, load_torch_into
from vxl_jax.model.videoxl import random_model


@pytest.mark.parametrize("image_size,layers", [(112, 3), (336, 2)])
def test_clip_layer_minus2_patch_features(image_size, layers):
    clip = tiny_clip(seed=3, image_size=image_size, num_hidden_layers=layers)
    qwen = tiny_qwen2(seed=0, num_hidden_layers=1, vocab_size=64)
    cfg = videoxl_config_for(qwen, clip)
    vision = {VISION_PREFIX + k: v for k, v in numpy_state(clip).items()}  # only the tower is copied
    ours = load_torch_into(random_model(cfg, seed=5), vision, strict=False)
    pixels = np.random.default_rng(0).normal(size=(3, 3, image_size, image_size)).astype(np.float32)
    with torch.no_grad():
        out = clip(pixel_values=torch.from_numpy(pixels), output_hidden_states=True)
    ref = out.hidden_states[-2][:, 1:].numpy()
    got = np.asarray(jax.jit(lambda m, p: m.vision_features(p))(ours, jnp.asarray(pixels)))
    assert got.shape == ref.shape == (3, (image_size // 14) ** 2, 16)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    # the last layer must not be used: the final hidden state differs clearly
    assert np.abs(out.hidden_states[-1][:, 1:].numpy() - got).max() > 1e-2
