"""Next-token choice following HF's logits processors in their order: repetition penalty, then
temperature, top-k, top-p (sampling only), then argmax or a draw.

In JAX, on device, used inside the compiled decode loop of :mod:`vxl_jax.infer.decode`: ``choose_jax`` with one
static :class:`SamplingParams` for every row (``VideoXL.generate``), or ``choose_row_jax`` with settings that are
data (:class:`RowParams`, one entry per row: the server's rows with different settings share one program; a row
chooses exactly as ``choose_jax`` with its own settings would). Tests compare them with transformers' processors
(tests/test_sampling_hf.py, tests/test_decode.py)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
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


def seen_mask(ids, vocab: int) -> jax.Array:
    """ids [N] (any ints; those outside [0, vocab) ignored) -> bool [vocab], True where an id occurs."""
    ids = jnp.asarray(ids, jnp.int32).reshape(-1)
    target = jnp.where((ids >= 0) & (ids < vocab), ids, vocab)
    return jnp.zeros((vocab,), bool).at[target].set(True, mode="drop")


def _divide(x: jax.Array, c) -> jax.Array:
    """x / c rounded as a true division (as numpy and torch). XLA turns a division by a broadcast scalar into
    a multiply by its reciprocal (1 ulp off); a full-shaped divisor behind an optimization barrier keeps a true
    division. ``c``: a Python float or a traced scalar."""
    return x / jax.lax.optimization_barrier(jnp.full(x.shape, c, x.dtype))


def repetition_penalty_jax(logits: jax.Array, seen: jax.Array, penalty) -> jax.Array:
    """logits [..., V], seen bool [..., V]: seen negative logits times ``penalty``, positive ones divided.
    ``penalty``: a Python float (1.0: nothing to do) or a traced scalar (one row's setting)."""
    if isinstance(penalty, (int, float)) and penalty == 1.0:
        return logits
    return jnp.where(seen, jnp.where(logits < 0, logits * penalty, _divide(logits, penalty)), logits)


def warp_jax(logits: jax.Array, p: SamplingParams) -> jax.Array:
    """Temperature, top-k, top-p on logits [..., V] as transformers' warpers (filtered entries -> -inf)."""
    out = _divide(logits, p.temperature) if p.temperature != 1.0 else logits
    if p.top_k and p.top_k < out.shape[-1]:
        kth = jax.lax.top_k(out, p.top_k)[0][..., -1:]
        out = jnp.where(out < kth, -jnp.inf, out)
    if p.top_p < 1.0:
        order = jnp.argsort(out, axis=-1, stable=True)  # ascending, as HF
        sorted_logits = jnp.take_along_axis(out, order, axis=-1)
        probs = jnp.exp(sorted_logits - sorted_logits[..., -1:])
        probs = probs / probs.sum(-1, keepdims=True)
        remove = jnp.cumsum(probs, axis=-1) <= 1.0 - p.top_p
        remove = remove.at[..., -1].set(False)  # keep at least one token
        removed = jnp.zeros_like(remove)
        removed = jnp.put_along_axis(removed, order, remove, axis=-1, inplace=False)
        out = jnp.where(removed, -jnp.inf, out)
    return out


def choose_jax(logits: jax.Array, seen: jax.Array, p: SamplingParams, key: jax.Array) -> jax.Array:
    """logits [..., V] fp32, seen bool [..., V], PRNG key -> next ids [...] int32 (argmax or a draw)."""
    scores = repetition_penalty_jax(logits.astype(jnp.float32), seen, p.repetition_penalty)
    if not p.do_sample:
        return jnp.argmax(scores, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, warp_jax(scores, p), axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------------- settings as data, one row each


@flax.struct.dataclass
class RowParams:
    """B rows' sampling settings as arrays [B] (traced, not compiled in). ``top_p_cut`` is ``1 - top_p`` computed
    in float64 on the host and rounded once to float32, as ``warp_jax`` compares with the Python float."""

    do_sample: jax.Array  # bool [B]
    temperature: jax.Array  # f32 [B] (1.0 on greedy rows)
    top_k: jax.Array  # int32 [B], 0 = off
    top_p_cut: jax.Array  # f32 [B]: 1 - top_p (0.0 = off)
    repetition_penalty: jax.Array  # f32 [B]

    @staticmethod
    def of(params: Sequence[SamplingParams]) -> "RowParams":
        """One :class:`SamplingParams` per row -> numpy arrays [B] (greedy rows keep only their penalty)."""
        greedy = [not p.do_sample for p in params]
        pick = lambda f, off: [off if g else f(p) for p, g in zip(params, greedy)]  # noqa: E731
        return RowParams(np.array([p.do_sample for p in params], bool),
                         np.array(pick(lambda p: p.temperature, 1.0), np.float32),
                         np.array(pick(lambda p: p.top_k, 0), np.int32),
                         np.array(pick(lambda p: 1.0 - p.top_p, 0.0), np.float32),
                         np.array([p.repetition_penalty for p in params], np.float32))


def _warp_row(out: jax.Array, p: RowParams) -> jax.Array:
    """``warp_jax`` for one row [V] whose settings are traced scalars (each warper applied only where it is on, so
    an off warper changes nothing, as ``warp_jax`` skips it)."""
    V = out.shape[-1]
    out = jnp.where(p.temperature != 1.0, _divide(out, p.temperature), out)
    kth = jnp.sort(out)[jnp.clip(V - p.top_k, 0, V - 1)]  # the k-th largest value, as lax.top_k's last
    out = jnp.where((p.top_k > 0) & (p.top_k < V) & (out < kth), -jnp.inf, out)
    order = jnp.argsort(out, stable=True)  # ascending, as HF
    sorted_logits = out[order]
    probs = jnp.exp(sorted_logits - sorted_logits[-1])
    probs = probs / probs.sum()
    remove = (jnp.cumsum(probs) <= p.top_p_cut).at[-1].set(False)  # keep at least one token
    removed = jnp.zeros_like(remove).at[order].set(remove)
    return jnp.where((p.top_p_cut > 0) & removed, -jnp.inf, out)


def choose_row_jax(logits: jax.Array, seen: jax.Array, p: RowParams, key: jax.Array, sample: bool) -> jax.Array:
    """One row: logits [V] fp32, seen bool [V], its settings (scalars of :class:`RowParams`), a PRNG key -> the next
    id (int32 scalar), equal to ``choose_jax`` with that row's :class:`SamplingParams`. ``sample`` (static): some
    row of the batch samples (else only the argmax is computed)."""
    scores = repetition_penalty_jax(logits.astype(jnp.float32), seen, p.repetition_penalty)
    greedy = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    if not sample:
        return greedy
    drawn = jax.random.categorical(key, _warp_row(scores, p)[None], axis=-1)[0].astype(jnp.int32)
    return jnp.where(p.do_sample, drawn, greedy)
