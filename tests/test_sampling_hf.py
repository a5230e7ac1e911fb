"""Sampling: the on-device logits processors (``vxl_jax.infer.sampling``) equal transformers' (torch) ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.hf_sampling import hf_greedy, hf_scores
from vxl_jax.infer.sampling import SamplingParams, choose_jax, repetition_penalty_jax, seen_mask, warp_jax


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 20, 0.8), (1.3, 0, 0.5), (1.0, 5, 1.0)])
def test_warpers_match_transformers(temperature, top_k, top_p):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=300).astype(np.float32) * 3
    p = SamplingParams(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    ours = np.asarray(warp_jax(jnp.asarray(logits), p))
    ref = hf_scores(logits, [], p)
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
    np.testing.assert_allclose(ours[~np.isinf(ours)], ref[~np.isinf(ref)], rtol=1e-6)


def test_repetition_penalty_matches_transformers():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=50).astype(np.float32)
    seen = np.array([3, 7, 7, 49, 0])
    p = SamplingParams(repetition_penalty=1.05)
    ref = hf_scores(logits, seen, p)
    ours = repetition_penalty_jax(jnp.asarray(logits), seen_mask(seen, 50), 1.05)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-7)
    greedy = choose_jax(jnp.asarray(logits), seen_mask(seen, 50), p, jax.random.PRNGKey(0))
    assert int(greedy) == hf_greedy(logits, seen, p) == int(ref.argmax())
