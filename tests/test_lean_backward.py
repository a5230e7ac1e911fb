"""The training backward that keeps one copy of the memory (``window_backward="lean"``) gives the
same loss and gradients as differentiating the plain window scan, with mixed ratios per window,
samples of different lengths (a partial and an empty window) and the memory cut off."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vxl_jax.beacon.train import windowed_loss
from vxl_jax.config import VideoXLConfig
from vxl_jax.model import random_model

RATIOS = (2, 4, 8)


@pytest.fixture(scope="module")
def setup():
    cfg = VideoXLConfig.from_yaml("configs/train_tiny.yaml")  # 56 px frames, 40-token windows (10 frames)
    rng = np.random.default_rng(0)
    B, P, S, F = 2, 6, 9, 25  # 3 windows; sample 1 has 12 frames: a partial second window, an empty third
    S_img = cfg.vision.image_size
    batch = dict(
        prefix_ids=rng.integers(3, 500, (B, P)).astype(np.int32),
        prefix_labels=np.where(rng.random((B, P)) < 0.5, rng.integers(3, 500, (B, P)), -100).astype(np.int32),
        prefix_len=np.array([6, 4], np.int32),
        pixels=rng.integers(0, 256, (B, F, S_img, S_img, 3)).astype(np.uint8),
        num_frames=np.array([25, 12], np.int32),
        suffix_ids=rng.integers(3, 500, (B, S)).astype(np.int32),
        suffix_labels=rng.integers(3, 500, (B, S)).astype(np.int32),
        suffix_len=np.array([9, 7], np.int32),
    )
    graphdef, state = nnx.split(random_model(cfg, seed=3, std=0.1))
    return graphdef, state, jax.tree.map(jnp.asarray, batch)


def _grads(setup, window_backward, ratio_idx, keep=True):
    graphdef, state, batch = setup

    def loss(s):
        total, n = windowed_loss(nnx.merge(graphdef, s), batch, ratio_idx, ratios=RATIOS, keep_memory=keep,
                                 window_backward=window_backward)
        return total / n

    return jax.jit(jax.value_and_grad(loss))(state)


# the first case is `slow`: CI's Python 3.12 leg runs only the second (both run in the 3.11 leg)
@pytest.mark.parametrize("ratio_idx,keep,reference", [pytest.param((0, 2, 1), True, "plain", marks=pytest.mark.slow),
                                                      ((2, 0, 0), False, "checkpoint")])
def test_lean_gradients_equal_the_scan(setup, ratio_idx, keep, reference):
    idx = jnp.asarray(ratio_idx, jnp.int32)
    ref_loss, ref = _grads(setup, reference, idx, keep)
    loss, got = _grads(setup, "lean", idx, keep)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    leaves = jax.tree_util.tree_leaves_with_path(ref)
    vision = [np.abs(np.asarray(g)).max() for p, g in leaves if "vision" in jax.tree_util.keystr(p)]
    assert (max(vision) > 0) == keep  # the video reaches the loss only through the kept memory
    for (path, a), b in zip(leaves, jax.tree.leaves(got)):
        scale = max(1.0, float(np.abs(np.asarray(a)).max()))
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5 * scale, rtol=0,
                                   err_msg=jax.tree_util.keystr(path))
