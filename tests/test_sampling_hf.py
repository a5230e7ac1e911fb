"""Sampling: our logits warpers and repetition penalty equal transformers' (torch) logits processors."""

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from vxl_jax.infer.sampling import SamplingParams, apply_repetition_penalty, choose, warp


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 20, 0.8), (1.3, 0, 0.5), (1.0, 5, 1.0)])
def test_warpers_match_transformers(temperature, top_k, top_p):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=300).astype(np.float32) * 3
    ours = warp(logits, SamplingParams(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p))
    t = torch.tensor(logits)[None]
    t = TemperatureLogitsWarper(temperature)(None, t)
    if top_k:
        t = TopKLogitsWarper(top_k)(None, t)
    if top_p < 1:
        t = TopPLogitsWarper(top_p)(None, t)
    ref = t[0].numpy()
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
    np.testing.assert_allclose(ours[~np.isinf(ours)], ref[~np.isinf(ref)], rtol=1e-6)


def test_repetition_penalty_matches_transformers():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=50).astype(np.float32)
    seen = np.array([3, 7, 7, 49, 0])
    ref = RepetitionPenaltyLogitsProcessor(1.05)(torch.tensor(seen)[None], torch.tensor(logits)[None])[0].numpy()
    np.testing.assert_allclose(apply_repetition_penalty(logits, seen, 1.05), ref, rtol=1e-7)
    assert choose(logits, seen, SamplingParams(repetition_penalty=1.05), np.random.default_rng(0)) == int(ref.argmax())
