"""Projector + 2x2 pool == PyTorch Sequential(Linear, GELU, Linear) then F.avg_pool2d(2, 2) (docs/algorithm.md §1)."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from tests.torch_ref import randomize_, tiny_clip, tiny_qwen2, videoxl_config_for
from vxl_jax.convert.names import load_torch_into
from vxl_jax.model.projector import pool_2x2
from vxl_jax.model.videoxl import random_model


def test_projector_then_pool_matches_torch():
    clip, qwen = tiny_clip(seed=1), tiny_qwen2(seed=0, num_hidden_layers=1, vocab_size=64)
    cfg = videoxl_config_for(qwen, clip)
    C, D, g = cfg.vision.hidden_size, cfg.lm.hidden_size, cfg.vision.grid
    proj = randomize_(torch.nn.Sequential(torch.nn.Linear(C, D), torch.nn.GELU(), torch.nn.Linear(D, D)), seed=7)
    tensors = {f"model.mm_projector.{k}": v for k, v in proj.state_dict().items()}
    ours = load_torch_into(random_model(cfg, seed=2), tensors, strict=False)

    frames = 3
    feats = np.random.default_rng(0).normal(size=(frames, g * g, C)).astype(np.float32)
    with torch.no_grad():
        y = proj(torch.from_numpy(feats))  # [F, 576, D]
        grid = y.view(frames, g, g, D).permute(0, 3, 1, 2)  # channels first
        pooled = F.avg_pool2d(grid, kernel_size=2, stride=2)  # [F, D, 12, 12]
        ref_proj = y.numpy()
        ref = pooled.permute(0, 2, 3, 1).reshape(frames, -1, D).numpy()

    got_proj = np.asarray(jax.jit(lambda m, x: m.projector(x))(ours, jnp.asarray(feats)))
    np.testing.assert_allclose(got_proj, ref_proj, atol=1e-5, rtol=0)
    got = np.asarray(pool_2x2(jnp.asarray(got_proj), g, cfg.projector.pool_stride))
    assert got.shape == ref.shape == (frames, (g // 2) ** 2, D)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    # pooling before projecting gives something else (GELU): the order is really tested
    pre = np.asarray(pool_2x2(jnp.asarray(feats), g, 2))
    swapped = np.asarray(ours.projector(jnp.asarray(pre)))
    assert np.abs(swapped - ref).max() > 1e-3
