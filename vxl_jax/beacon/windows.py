"""One compression window, and the ``jax.lax.scan`` over windows (docs/algorithm.md §3-§6).

A window holds up to ``beacon.window`` (1440) visual tokens. With ratio r it is laid out as
``[r raw, 1 beacon] * (window / r)``: beacon j at offset j(r+1)+r, raw token k at k + k//r.
All layers run over ``[memory || window]`` (full memory visibility, causal inside the window;
beacon rows use the beacon q/k/v projections). Afterwards only the beacons' K/V are kept: they are
appended to the memory, rotated with their memory slot (compact positions, docs/algorithm.md §5).

Static shapes: every window has the full length; a partial last window (n < 1440 valid tokens,
frame-aligned) is padded at the end and masked. Its padding comes after every valid row, so
causal attention never lets a valid row see it, and only its ``n // r`` valid beacons are kept
(trailing raw tokens after the last beacon are lost, exactly like the original, docs/algorithm.md §3).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vxl_jax.beacon.memory import KVMemory, append
from vxl_jax.model.scan import remat_policy
from vxl_jax.runtime.sharding import constrain


def interleave_layout(window: int, ratio: int):
    """Static layout of a window with ratio r, as numpy arrays of length T = window + window // r.

    Returns (is_beacon [T] bool, raw_index [T] (k for raw rows), beacon_index [T] (j for beacon rows)).
    """
    t = np.arange(window + window // ratio)
    block, offset = t // (ratio + 1), t % (ratio + 1)
    is_beacon = offset == ratio
    return is_beacon, block * ratio + offset, block


def interleave(features, beacon_vec, ratio: int):
    """features [B, n, D] (n divisible by r) -> [B, n + n/r, D] with ``beacon_vec`` after every r rows."""
    B, n, D = features.shape
    groups = features.reshape(B, n // ratio, ratio, D)
    beacons = jnp.broadcast_to(beacon_vec.astype(features.dtype), (B, n // ratio, 1, D))
    return jnp.concatenate([groups, beacons], axis=2).reshape(B, n + n // ratio, D)


def window_step(model, mem: KVMemory, features, n_valid, ratio: int, *, keep: bool = True,
                sliced_memory: bool = False):
    """Compress one window into the memory.

    features [B, window, D] visual tokens (rows >= n_valid[b] are padding); n_valid [B] int32.
    Returns (memory with n_valid // ratio beacons appended per sample, hidden [B, T, D]).
    ``keep=False`` runs the window but appends nothing (ablation: memory cut off).
    ``sliced_memory``: see :meth:`vxl_jax.model.qwen2.Qwen2LM.__call__` (True under autodiff).
    The attention backend and remat policy are the model's (``model.cfg.runtime``).
    """
    lm, rt = model.lm, model.cfg.runtime
    B, window, _ = features.shape
    is_beacon, raw_index, beacon_index = interleave_layout(window, ratio)
    x = interleave(features, lm.beacon_vector(features.dtype), ratio)
    n_beacons = n_valid // ratio
    valid = jnp.where(is_beacon[None], beacon_index[None] < n_beacons[:, None], raw_index[None] < n_valid[:, None])
    positions = mem.length[:, None] + jnp.arange(x.shape[1], dtype=jnp.int32)[None]
    hidden, k, v = lm(x, positions=positions, valid=valid, beacon_mask=jnp.broadcast_to(is_beacon, valid.shape),
                      mem_k=mem.k, mem_v=mem.v, mem_len=mem.length, attention=rt.attention, remat=rt.remat,
                      sliced_memory=sliced_memory)
    sel = slice(ratio, None, ratio + 1)  # beacon rows, in interleave order
    count = n_beacons if keep else jnp.zeros_like(n_beacons)
    mem = append(mem, k[:, :, sel], v[:, :, sel], count, theta=lm.cfg.rope_theta, kind="beacons")
    return mem, hidden


def encode_window(model, window_input, from_pixels: bool):
    """Window input -> visual tokens [B, window, D]. Pixels (uint8 [B, f, S, S, 3] or float [B, f, 3, S, S])
    run CLIP + projector + pool here."""
    if not from_pixels:
        return window_input.astype(model.compute_dtype)
    B, f = window_input.shape[:2]
    frames = constrain(window_input.reshape(B * f, *window_input.shape[2:]), ("frames",) + (None,) * (window_input.ndim - 2))
    tokens = model.encode_frames(frames)
    return constrain(tokens.reshape(B, f * tokens.shape[1], tokens.shape[2]), ("batch", "length", "act_embed"))


def compress_windows(model, mem: KVMemory, windows, n_valid, ratio_idx, *, ratios: tuple[int, ...],
                     from_pixels: bool, window_remat: bool = False, keep: bool = True, sliced_memory: bool = False):
    """Scan over windows; the carry is the memory.

    windows: pixels [W, B, frames_per_window, *frame] (uint8 [S, S, 3] or float [3, S, S] frames,
    ``from_pixels``) or features [W, B, window, D];
    n_valid [W, B] int32 valid visual tokens per window; ratio_idx [W] int32 index into ``ratios``
    (ignored when a single ratio is given). With several ratios each window picks its branch with
    ``lax.switch``; every branch appends into the same static buffer, so one compilation serves all.
    """
    ratios = tuple(int(r) for r in ratios)

    def body(m, xs):
        inp, n, idx = xs
        feats = encode_window(model, inp, from_pixels)
        branches = [functools.partial(_step_only_memory, model, ratio=r, keep=keep, sliced_memory=sliced_memory)
                    for r in ratios]
        return pick_branch(idx, branches, m, feats, n), None

    if window_remat:
        body = jax.checkpoint(body, policy=remat_policy("full"), prevent_cse=False)
    mem, _ = jax.lax.scan(body, mem, (windows, n_valid, ratio_idx))
    return mem


def pick_branch(idx, branches, *args):
    """``branches[idx](*args)``: a ``lax.switch`` over the ratio branches, or a plain call when there is one."""
    if len(branches) == 1:
        return branches[0](*args)
    return jax.lax.switch(idx, branches, *args)


def _step_only_memory(model, mem, feats, n, *, ratio, keep, sliced_memory):
    return window_step(model, mem, feats, n, ratio, keep=keep, sliced_memory=sliced_memory)[0]


def window_token_counts(num_visual, num_windows: int, window: int):
    """num_visual [B] -> [W, B] valid tokens per window (last window clipped, later ones 0)."""
    starts = jnp.arange(num_windows, dtype=jnp.int32)[:, None] * window
    return jnp.clip(num_visual[None, :] - starts, 0, window).astype(jnp.int32)
