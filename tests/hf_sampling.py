"""The reference next-token choice for the tests: transformers' (torch) logits processors in ``generate``'s
order — repetition penalty, then (sampling only) temperature, top-k, top-p — on one row of logits."""

from __future__ import annotations

import numpy as np
import torch
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)


def hf_scores(logits, seen, p) -> np.ndarray:
    """logits [V] fp32, seen token ids [N] (ids outside [0, V) ignored), ``SamplingParams`` -> fp32 [V] scores
    (filtered entries -inf) as transformers computes them before its argmax / multinomial draw."""
    logits = np.asarray(logits, np.float32)
    seen = np.asarray(seen, np.int64).reshape(-1)
    seen = seen[(seen >= 0) & (seen < logits.shape[-1])]
    scores = torch.tensor(logits)[None]
    if p.repetition_penalty != 1.0 and seen.size:
        scores = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(torch.tensor(seen)[None], scores)
    if p.do_sample:
        if p.temperature != 1.0:
            scores = TemperatureLogitsWarper(p.temperature)(None, scores)
        if p.top_k:
            scores = TopKLogitsWarper(p.top_k)(None, scores)
        if p.top_p < 1.0:
            scores = TopPLogitsWarper(p.top_p)(None, scores)
    return scores[0].numpy()


def hf_greedy(logits, seen, p) -> int:
    """The greedy next token of :func:`hf_scores` (repetition penalty applied)."""
    return int(np.argmax(hf_scores(logits, seen, p)))


def hf_probs(logits, seen, p) -> np.ndarray:
    """The sampling distribution float64 [V] of :func:`hf_scores` (softmax; filtered tokens 0)."""
    scores = hf_scores(logits, seen, p).astype(np.float64)
    probs = np.exp(scores - scores.max())
    return probs / probs.sum()
