"""The window scan equals the one-mask reference (tests/compression_reference.py) on random tiny models."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from compression_reference import build_layout, run
from vxl_jax.infer.api import VideoXL
from vxl_jax.model import random_model



@pytest.fixture(scope="module")
def vx(tiny_cfg):
    # 2-frame (288-token) windows keep the reference small while exercising several windows.
    cfg = tiny_cfg.replace(beacon=dataclasses.replace(tiny_cfg.beacon, window=288, stride=288))
    return VideoXL(cfg, random_model(cfg, seed=3, std=0.15))


def _params(vx):
    return nnx.to_pure_dict(nnx.state(vx.model, nnx.Param))


@pytest.mark.parametrize("ratio,frames,prefix_len,suffix_len", [
    (2, 1, 5, 7),      # one short window (144 of 288 tokens)
    (8, 5, 9, 4),      # two full windows + a partial one (288 + 288 + 144)
    (16, 3, 1, 11),    # full + partial, ratio 16
    (12, 6, 14, 3),    # three full windows
])
def test_scan_equals_reference(vx, ratio, frames, prefix_len, suffix_len):
    rng = np.random.default_rng(ratio * 100 + frames)
    cfg = vx.cfg
    pixels = rng.normal(size=(frames, 3, 336, 336)).astype(np.float32)
    prefix = rng.integers(3, cfg.lm.vocab_size - 1, prefix_len)
    suffix = rng.integers(3, cfg.lm.vocab_size - 1, suffix_len)
    ids = np.concatenate([prefix, [-200], suffix])
    res = vx.prefill(ids, pixels, ratio=ratio)

    features = np.asarray(vx.model.encode_frames(pixels)).reshape(-1, cfg.lm.hidden_size)
    n_windows = -(-len(features) // cfg.beacon.window)
    layout = build_layout(_params(vx), prefix, features, suffix, [ratio] * n_windows, cfg.beacon.window)
    ref_logits, ref_k, ref_v = run(_params(vx), cfg, layout)

    n_beacons = sum(min(cfg.beacon.window, len(features) - w * cfg.beacon.window) // ratio for w in range(n_windows))
    assert res.sizes == {"prefix": prefix_len, "beacons": n_beacons, "text": suffix_len,
                         "total": prefix_len + n_beacons + suffix_len}
    np.testing.assert_allclose(res.logits, ref_logits, atol=1e-4, rtol=0)
    n = res.sizes["total"]
    np.testing.assert_allclose(np.asarray(res.memory.k)[:, 0, :n], ref_k, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(res.memory.v)[:, 0, :n], ref_v, atol=1e-5, rtol=0)


def test_step_random_ratios_equal_reference(vx):
    """Per-window ratios (lax.switch inside the scan) follow numpy default_rng(42) and match the reference."""
    rng = np.random.default_rng(7)
    cfg = vx.cfg
    features = rng.normal(size=(3 * 288 + 144, cfg.lm.hidden_size)).astype(np.float32)
    prefix, suffix = rng.integers(3, 500, 6), rng.integers(3, 500, 5)
    vx.ratio_rng = np.random.default_rng(42)
    res = vx.prefill(np.concatenate([prefix, [-200], suffix]), None, ratio=[2, 4, 8], features=features)
    expected_rng = np.random.default_rng(42)
    expected = tuple(int(expected_rng.choice([2, 4, 8])) for _ in range(4))
    assert res.ratios == expected
    assert len(set(res.ratios)) > 1, "seed 42 should mix ratios over 4 windows"
    layout = build_layout(_params(vx), prefix, features, suffix, list(res.ratios), cfg.beacon.window)
    ref_logits, ref_k, _ = run(_params(vx), cfg, layout)
    np.testing.assert_allclose(res.logits, ref_logits, atol=1e-4, rtol=0)
    n = res.sizes["total"]
    np.testing.assert_allclose(np.asarray(res.memory.k)[:, 0, :n], ref_k, atol=1e-5, rtol=0)


def test_ratio_not_dividing_window_is_an_error(vx):
    with pytest.raises(ValueError, match="does not divide"):
        vx.prefill(np.array([5, -200, 6]), np.zeros((1, 3, 336, 336), np.float32), ratio=7)
