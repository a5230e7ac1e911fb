"""Training objective: the windowed forward with per-window ratios, gradients through the memory.

Sequence layout per sample (docs/algorithm.md §8): ``prefix || video windows || suffix``; labels are already
shifted (label[i] = the token that should follow position i, -100 = ignore). Visual and beacon
positions carry no loss, so only prefix and suffix rows are scored; the suffix reads the video
only through the beacon K/V in memory, so the loss back-propagates through every window.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vxl_jax.beacon.lean import compress_windows_lean
from vxl_jax.beacon.text import text_step
from vxl_jax.beacon.windows import compress_windows, window_token_counts
from vxl_jax.text.constants import IGNORE_INDEX
from vxl_jax.beacon.memory import KVMemory
from vxl_jax.runtime.sharding import constrain, constrain_memory


def token_cross_entropy(logits, labels):
    """logits [B, T, V] fp32, labels [B, T] (-100 ignored) -> (sum of losses, number of scored tokens)."""
    scored = labels != IGNORE_INDEX
    safe = jnp.where(scored, labels, 0)
    logz = jax.nn.logsumexp(logits, axis=-1)
    # the label's logit as a masked sum (exact: one term, the rest zeros): a reduction over V, so logits
    # split over the vocabulary are never gathered
    hit = jnp.arange(logits.shape[-1], dtype=jnp.int32) == safe[..., None]
    picked = jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
    return jnp.sum(jnp.where(scored, logz - picked, 0.0)), jnp.sum(scored).astype(jnp.int32)


def embed_tokens(lm, ids, dtype):
    """ids [B, T] -> [B, T, D], without gathering the [V, D] table: under a mesh every chip looks all the
    (few) ids up in its own shard of the table (split over D in the fsdp presets) and only the rows move."""
    ids = constrain(ids, (None, None))
    return constrain(lm.embed_tokens(ids, dtype), (None, None, "embed"))


def vocab_parallel_loss(lm, hidden, labels):
    """Summed token CE of ``lm.logits(hidden)`` [B, T, D] against labels [B, T] (-100 ignored) -> (loss_sum,
    n_scored), like :func:`token_cross_entropy` of those logits.

    Under a mesh the lm_head [D, V] is resharded over the vocabulary (rule ``loss_vocab``: an all-to-all of
    its shard, not a gather of the whole matrix), the few hidden rows are gathered instead, and the fp32
    logits and their gradient stay split over V: no chip holds the whole lm_head, its gradient (computed
    in place, in its own shard) or whole rows of logits. Off a mesh the constraints are no-ops.
    """
    hidden = constrain(hidden, (None, None, None))
    w = constrain(lm.lm_head[...], (None, "loss_vocab"))
    logits = jnp.einsum("...d,dv->...v", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)
    return token_cross_entropy(constrain(logits, (None, None, "loss_vocab")), labels)


def windowed_loss(model, batch: dict, ratio_idx, *, ratios: tuple[int, ...], keep_memory: bool = True,
                  window_backward: str = "lean"):
    """Summed token CE over prefix and suffix of a batch, and the number of scored tokens.

    batch: prefix_ids/prefix_labels [B, P], prefix_len [B]; pixels uint8 [B, F, S, S, 3] (normalized on
    device) or preprocessed float [B, F, 3, S, S], num_frames [B];
    suffix_ids/suffix_labels [B, S], suffix_len [B]. ratio_idx [W] int32 (W = ceil(F / frames per
    window)) picks each window's ratio from ``ratios``. ``keep_memory=False`` cuts the beacon memory
    off (ablation). ``window_backward``: "lean" (one copy of the memory in the backward,
    :mod:`vxl_jax.beacon.lean`), "checkpoint" (scan of checkpointed windows: each keeps its memory
    carry) or "plain" (no checkpoint); all three give the same gradients. Attention backend and remat
    policy come from ``model.cfg.runtime`` (the one place runtime settings live).
    Returns (loss_sum fp32 scalar, n_tokens int32 scalar).
    """
    b = model.cfg.beacon
    ratios = tuple(int(r) for r in ratios)
    prefix_ids, pixels = batch["prefix_ids"], batch["pixels"]
    F = pixels.shape[1]
    W = b.windows_for_frames(F)
    if ratio_idx.shape != (W,):
        raise ValueError(f"ratio_idx must have shape ({W},) for {F} frames, got {ratio_idx.shape}")
    mem = _empty_memory(model, prefix_ids.shape[0], prefix_ids.shape[1] + W * (b.window // min(ratios)))
    # Prefix: plain causal text (positions 0..P-1: the memory is empty), kept in full as the sink.
    loss, count, mem = _scored_text(model, mem, prefix_ids, batch["prefix_labels"], batch["prefix_len"],
                                    kind="prefix")
    # Video: one scan over windows (CLIP + projector + pool run inside each window step), then the suffix,
    # which reads [prefix || beacons] and is scored.
    suffix = (batch["suffix_ids"], batch["suffix_labels"], batch["suffix_len"])
    if W:
        s_loss, s_count = _video_then_suffix(model, mem, pixels, batch["num_frames"], ratio_idx, suffix, ratios=ratios,
                                             keep_memory=keep_memory, window_backward=window_backward)
    else:
        s_loss, s_count = _suffix_loss(model, mem, *suffix)
    return loss + s_loss, count + s_count


def _empty_memory(model, B: int, capacity: int) -> KVMemory:
    """An empty memory [L, B, capacity, KV, Dh] in the compute dtype, laid out by the sharding rules."""
    lm = model.cfg.lm
    mem = KVMemory.empty(lm.num_layers, B, capacity, lm.num_kv_heads, lm.head_dim, model.compute_dtype)
    k, v = constrain_memory(mem.k, mem.v)
    return mem.replace(k=k, v=v)


def _scored_text(model, mem: KVMemory, ids, labels, length, *, kind):
    """Text ids [B, T] (``length`` [B] real) over ``mem``, scored against ``labels`` [B, T] (rows past the
    length ignored) -> (loss_sum, n_tokens, memory; with the text appended when ``kind`` is "prefix")."""
    lm = model.lm
    hidden, mem = text_step(model, mem, embed_tokens(lm, ids, model.compute_dtype), length, kind=kind,
                            sliced_memory=True)
    t = jnp.arange(ids.shape[1], dtype=jnp.int32)[None]
    loss, count = vocab_parallel_loss(lm, hidden, jnp.where(t < length[:, None], labels, IGNORE_INDEX))
    return loss, count, mem


def _suffix_loss(model, mem: KVMemory, ids, labels, length):
    """The scored suffix over the memory -> (loss_sum, n_tokens)."""
    return _scored_text(model, mem, ids, labels, length, kind=None)[:2]


def _video_then_suffix(model, mem: KVMemory, pixels, num_frames, ratio_idx, suffix, *, ratios: tuple[int, ...],
                       keep_memory: bool, window_backward: str):
    """Frames [B, F, ...] (``num_frames`` [B] real) cut into W windows [W, B, fpw, ...] and compressed into
    ``mem`` by one scan (the backward as ``window_backward`` picks, see :func:`windowed_loss`), then the
    suffix (ids, labels, length) scored over it -> (loss_sum, n_tokens). The lean backward takes the
    suffix inside (:func:`vxl_jax.beacon.lean.compress_windows_lean`'s ``then``)."""
    b = model.cfg.beacon
    B, F = pixels.shape[:2]
    fpw = b.frames_per_window
    W = b.windows_for_frames(F)
    px = jnp.pad(pixels, [(0, 0), (0, W * fpw - F)] + [(0, 0)] * (pixels.ndim - 2))
    windows = px.reshape(B, W, fpw, *pixels.shape[2:]).swapaxes(0, 1)  # [W, B, fpw, *frame]
    windows = constrain(windows, (None, "batch") + (None,) * (windows.ndim - 2))
    n_valid = window_token_counts(num_frames * b.tokens_per_frame, W, b.window)
    kw = dict(ratios=ratios, from_pixels=True, keep=keep_memory)
    if window_backward == "lean":
        return compress_windows_lean(model, mem, windows, n_valid, ratio_idx, then=_suffix_loss, then_args=suffix, **kw)
    if window_backward in ("checkpoint", "plain"):
        mem = compress_windows(model, mem, windows, n_valid, ratio_idx, window_remat=window_backward == "checkpoint",
                               sliced_memory=True, **kw)
        return _suffix_loss(model, mem, *suffix)
    raise ValueError(f"window_backward must be 'lean', 'checkpoint' or 'plain', got {window_backward!r}")
