"""Next-token choice on the host, following HF's logits processors in their order:
repetition penalty, then temperature, top-k, top-p (sampling only), then argmax or a draw."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off

    def __post_init__(self):
        if self.temperature <= 0 and self.do_sample:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Seen tokens: negative logits multiplied by ``penalty``, positive ones divided (HF semantics)."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    ids = np.unique(seen[(seen >= 0) & (seen < logits.shape[-1])])
    out = logits.copy()
    s = out[ids]
    out[ids] = np.where(s < 0, s * penalty, s / penalty)
    return out


def warp(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """Temperature, top-k, top-p filtering (filtered entries become -inf)."""
    out = logits / p.temperature if p.temperature != 1.0 else logits.copy()
    if p.top_k and p.top_k < out.shape[-1]:
        kth = np.partition(out, -p.top_k)[-p.top_k]
        out = np.where(out < kth, -np.inf, out)
    if p.top_p < 1.0:
        order = np.argsort(out, kind="stable")  # ascending, as HF
        sorted_logits = out[order]
        probs = np.exp(sorted_logits - sorted_logits.max())
        probs /= probs.sum()
        remove = np.cumsum(probs) <= 1.0 - p.top_p
        remove[-1] = False  # keep at least one token
        out = out.copy()
        out[order[remove]] = -np.inf
    return out


def choose(logits: np.ndarray, seen: np.ndarray, p: SamplingParams, rng: np.random.Generator) -> int:
    """logits [V] fp32 -> next token id."""
    scores = apply_repetition_penalty(np.asarray(logits, np.float32), seen, p.repetition_penalty)
    if not p.do_sample:
        return int(np.argmax(scores))
    scores = warp(scores, p).astype(np.float64)
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    return int(rng.choice(probs.shape[-1], p=probs))
