"""Batched answering: B prompts prefilled and decoded in one batched call (``VideoXL.generate`` with lists).

    vx.generate([ids_1, ..., ids_B], [pixels_1, ..., pixels_B])     # B videos (any lengths; None: text only)
    vx.generate([q_1, ..., q_B], None, memory=video_memory)          # B questions over one encoded video
    vx.generate([q_1, ..., q_B], None, memory=[mem_1, ..., mem_B])   # B saved memories

Every row has its own memory row ``[prefix || beacons || text]`` with its own length counters: rows of
different lengths share one padded buffer and attention masks each row at its own length, so a row's
numbers are those of its single call (fp32 rounding). Videos in one call are compressed together (one window
scan over ``[W, B, ...]``, a row's windows past its video count zero tokens and append nothing); the same
pixel array given for several rows (with the same prefix) is encoded once. Decoding runs all rows in
lockstep; each stops on its own.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from vxl_jax.beacon.ratios import DEFAULT_RATIO
from vxl_jax.beacon.windows import window_token_counts
from vxl_jax.text.constants import IMAGE_TOKEN_INDEX
from vxl_jax.beacon.memory import KVMemory
from vxl_jax.media.preprocess import resize_crop_frames
from vxl_jax.infer.results import FRAME_CALL_WINDOWS, TEXT_BUCKET, VideoMemory, chunk_sizes, round_up, split_prompt


def is_batch(input_ids) -> bool:
    """A list / tuple of 1-D id sequences (not one prompt given as a list of ints)."""
    return isinstance(input_ids, (list, tuple)) and len(input_ids) > 0 and all(
        np.ndim(x) == 1 for x in input_ids)


def pad_rows(mem: KVMemory, capacity: int) -> KVMemory:
    """Grow the slot axis of ``mem`` to exactly ``capacity`` (zero slots at the end)."""
    extra = capacity - mem.capacity
    if extra <= 0:
        return mem
    pad = [(0, 0), (0, 0), (0, extra), (0, 0), (0, 0)]
    return mem.replace(k=jnp.pad(mem.k, pad), v=jnp.pad(mem.v, pad))


def stack_rows(mems: list[KVMemory], capacity: int) -> KVMemory:
    """Memories (batch b_i each) -> one memory of batch sum(b_i) and ``capacity`` slots."""
    mems = [pad_rows(m, capacity) if m.capacity < capacity else m for m in mems]
    mems = [m if m.capacity == capacity else m.replace(k=m.k[:, :, :capacity], v=m.v[:, :, :capacity]) for m in mems]
    cat = lambda name, axis: jnp.concatenate([getattr(m, name) for m in mems], axis=axis)  # noqa: E731
    return KVMemory(cat("k", 1), cat("v", 1), cat("length", 0), cat("n_prefix", 0), cat("n_beacons", 0),
                    cat("n_text", 0))


def encode_videos(vx, prefixes: list[np.ndarray], pixels: list, ratio, capacity: int) -> KVMemory:
    """U prompts' ``prefix || video`` compressed together -> memory [L, U, capacity]. ``ratio``: one int for
    every window of every row. ``pixels[u]`` None: the row holds only its prefix (text-only prompt)."""
    b = vx.cfg.beacon
    U = len(prefixes)
    rows = []
    for px in pixels:
        if px is None:
            rows.append(None)
            continue
        p = vx._pixels(px, keep_uint8=True)
        rows.append(resize_crop_frames(p, size=vx.cfg.vision.image_size) if p.dtype == np.uint8 else p)
    forms = {(r.dtype, r.shape[1:]) for r in rows if r is not None}
    if len(forms) > 1:
        raise ValueError(f"the videos of one batched call must be in one form (all uint8 or all float), got {forms}")
    lm = vx.cfg.lm
    mem = KVMemory.empty(lm.num_layers, U, capacity, lm.num_kv_heads, lm.head_dim, vx._dtype)
    longest = max(len(p) for p in prefixes)
    if longest:
        ids = np.zeros((U, round_up(longest, TEXT_BUCKET)), np.int32)
        for u, p in enumerate(prefixes):
            ids[u, :len(p)] = p
        _, mem = vx.engine.text(mem, jnp.asarray(ids), jnp.asarray([len(p) for p in prefixes], jnp.int32),
                                kind="prefix", donate=True)
    if not forms:
        return mem
    (dtype, frame_shape), = forms
    per = b.frames_per_window
    num_visual = np.array([0 if r is None else len(r) * b.tokens_per_frame for r in rows])
    n_windows = b.num_windows(num_visual.max())
    counts = np.asarray(window_token_counts(num_visual.astype(np.int32), n_windows, b.window))  # [W, U]
    start = 0
    for size in chunk_sizes(n_windows, FRAME_CALL_WINDOWS):
        block = np.zeros((size, U, per, *frame_shape), dtype)
        for u, r in enumerate(rows):
            if r is None:
                continue
            part = r[start * per:(start + size) * per]
            for w in range(size):
                f = part[w * per:(w + 1) * per]
                block[w, u, :len(f)] = f
        inputs = jnp.asarray(block, np.uint8 if dtype == np.uint8 else vx._dtype)
        mem = vx.engine.windows(mem, inputs, jnp.asarray(counts[start:start + size]),
                                jnp.zeros((size,), jnp.int32), ratios=(int(ratio),), from_pixels=True)
        start += size
    return mem


def generate_batch(vx, input_ids, pixel_values=None, ratio=None, *, max_new: int, params, stops, seed=0,
                   memory=None, return_logits: bool = False, chunk: int = 16):
    """B prompts -> B id arrays (and B fp32 [n_b, V] step-logit arrays with ``return_logits``).

    input_ids: B 1-D id arrays (with a -200 placeholder where a video goes, or text only), or with ``memory``
    B suffixes (the text after the video). pixel_values: None or B entries (None: no video). memory: one
    ``VideoMemory`` / ``KVMemory`` shared by every row, or B of them. seed: an int (every row), or B ints.
    """
    B = len(input_ids)
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [int(seed)] * B
    if len(seeds) != B:
        raise ValueError(f"{len(seeds)} seeds for {B} prompts")
    if memory is not None:
        if pixel_values is not None and any(p is not None for p in pixel_values):
            raise ValueError("give pixel_values or memory, not both")
        base, rows, texts, seen = _rows_over_memories(input_ids, memory, max_new)
    else:
        base, rows, texts, seen = _rows_over_videos(vx, input_ids, pixel_values, ratio, max_new)
    # one memory row per prompt (a shared video memory is gathered, not re-encoded)
    idx = jnp.asarray(rows, jnp.int32)
    mem = KVMemory(base.k[:, idx], base.v[:, idx], base.length[idx], base.n_prefix[idx], base.n_beacons[idx],
                   base.n_text[idx])
    ids, n = _padded_texts(texts)
    logits, mem = vx.engine.text(mem, jnp.asarray(ids), jnp.asarray(n), kind="text", donate=True)
    last = np.asarray(logits, np.float32)[np.arange(B), n - 1]
    out, step_logits, mem = vx._decode_rows(mem, last, seen, params=params, stops=stops, max_new=max_new,
                                            seeds=seeds, chunk=chunk, return_logits=return_logits)
    return out, step_logits, mem


def _rows_over_memories(input_ids, memory, max_new: int):
    """B suffixes over saved memories (one shared, or B) -> (base memory [L, U, capacity] with one row per
    distinct memory, each prompt's row index in it, the B texts int32, the B full prompts seen)."""
    B = len(input_ids)
    mems = list(memory) if isinstance(memory, (list, tuple)) else [memory] * B
    if len(mems) != B:
        raise ValueError(f"{len(mems)} memories for {B} prompts")
    mems = [m if isinstance(m, VideoMemory) else VideoMemory(m, np.zeros((0,), np.int32)) for m in mems]
    texts = [np.asarray(i) for i in input_ids]
    if any((t == IMAGE_TOKEN_INDEX).any() for t in texts):
        raise ValueError("with memory=..., input_ids must be the texts after the video (no -200 placeholder)")
    texts = [t.astype(np.int32) for t in texts]
    seen = [np.concatenate([m.prompt_ids, t]) for m, t in zip(mems, texts)]
    # one memory row per distinct memory object (B questions over one video: encoded once, stored once)
    uniq: dict[int, int] = {}
    for m in mems:
        uniq.setdefault(id(m.kv), len(uniq))
    rows = [uniq[id(m.kv)] for m in mems]
    kvs = {uniq[id(m.kv)]: m.kv for m in mems}
    for kv in kvs.values():
        if kv.k.shape[1] != 1:
            raise ValueError(f"each memory must hold one prompt (batch 1), got batch {kv.k.shape[1]}")
    longest = max(int(np.asarray(kvs[r].length)[0]) + len(t) for r, t in zip(rows, texts))
    capacity = round_up(longest + max_new + TEXT_BUCKET, 256)
    return stack_rows([kvs[u] for u in range(len(kvs))], capacity), rows, texts, seen


def _rows_over_videos(vx, input_ids, pixel_values, ratio, max_new: int):
    """B full prompts (with their videos, or text only) -> (base memory [L, U, capacity] of the U distinct
    ``prefix || video`` pairs, encoded together, each prompt's row index in it, the B texts after the video,
    the B full prompts seen)."""
    B = len(input_ids)
    pixels = list(pixel_values) if pixel_values is not None else [None] * B
    if len(pixels) != B:
        raise ValueError(f"{len(pixels)} pixel_values for {B} prompts")
    if not isinstance(ratio if ratio is not None else DEFAULT_RATIO, (int, np.integer)):
        raise ValueError("batched prompts with videos take one int ratio (step-random ratio lists: one call per "
                         "video, or sessions)")
    ratio = int(ratio if ratio is not None else DEFAULT_RATIO)
    vx.cfg.beacon.check_ratio(ratio)
    prefixes, texts, videos, seen, rows, keys = [], [], [], [], [], {}
    for i, (ids, px) in enumerate(zip(input_ids, pixels)):
        prefix, suffix = split_prompt(ids)
        if suffix is None:  # text only: the whole prompt is text after an empty memory
            if px is not None:
                raise ValueError(f"prompt {i}: pixel_values given but input_ids have no -200 video placeholder")
            prefix, suffix = prefix[:0], prefix
        elif px is None:
            raise ValueError(f"prompt {i}: input_ids contain the -200 video placeholder but no pixel_values")
        key = (id(px) if px is not None else None, prefix.tobytes())
        if key not in keys:
            keys[key] = len(prefixes)
            prefixes.append(prefix)
            videos.append(px)
        rows.append(keys[key])
        texts.append(suffix)
        seen.append(np.concatenate([prefix, suffix]))
    b = vx.cfg.beacon
    frames = [0 if v is None else vx._pixels(v, keep_uint8=True).shape[0] for v in videos]
    beacons = [b.windows_for_frames(f) * (b.window // ratio) for f in frames]
    longest = max(len(prefixes[r]) + beacons[r] + len(t) for r, t in zip(rows, texts))
    capacity = round_up(longest + max_new + 2 * TEXT_BUCKET, 256)
    return encode_videos(vx, prefixes, videos, ratio, capacity), rows, texts, seen


def _padded_texts(texts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """B texts -> (ids int32 [B, T] zero-padded to a ``TEXT_BUCKET`` multiple, lengths int32 [B])."""
    T = round_up(max(len(t) for t in texts), TEXT_BUCKET)
    ids = np.zeros((len(texts), T), np.int32)
    for i, t in enumerate(texts):
        if not len(t):
            raise ValueError(f"prompt {i} has no text after the video")
        ids[i, :len(t)] = t
    return ids, np.array([len(t) for t in texts], np.int32)
