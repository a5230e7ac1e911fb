"""The inference core: B rows in one batched pass (a single prompt is B = 1).

A row (:class:`Row`) is text before the video (``prefix``), a video (:class:`VideoInput`: raw uint8 frames,
preprocessed float frames or visual-token features) or none, then text (``text``: the question, or the whole
prompt when there is no video); or a saved video memory followed by text. Every way of asking (``VideoXL``'s
prefill / generate / score, batched lists, sessions, evaluation, each ``infer.py`` mode) reaches the model
through :class:`InferenceCore`, which owns, once:

- :meth:`InferenceCore.feed_windows`: the one loop feeding videos to the window scan (staging with the one
  resize rule :func:`stage_frames`, zero padding, ``[W, B, per, ...]`` blocks, a few windows per compiled call);
- :func:`capacity`: the one memory-capacity rule (:meth:`InferenceCore.empty_memory`, :meth:`InferenceCore.prompt`,
  sessions' growth);
- :meth:`InferenceCore.text`: text over a memory (B rows, logits of every position);
- :meth:`InferenceCore.prompt`: rows -> their memories and the logits of their texts;
- :meth:`InferenceCore.decode`: chunked on-device decoding of B rows in lockstep, each stopping on its own.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from vxl_jax.beacon.memory import KVMemory, bucket, concat_rows, take_rows
from vxl_jax.beacon.ratios import DEFAULT_RATIO, ratio_schedule
from vxl_jax.beacon.windows import window_token_counts
from vxl_jax.infer.decode import stop_mask
from vxl_jax.infer.engine import Engine
from vxl_jax.infer.results import VideoMemory, split_prompt
from vxl_jax.infer.sampling import SamplingParams, seen_mask
from vxl_jax.media.preprocess import resize_crop_frames
from vxl_jax.model.layers import dtype_of
from vxl_jax.text.constants import IMAGE_TOKEN_INDEX

SLOT_BUCKET = 256  # memory capacities are multiples of this: few distinct shapes, few compilations
TEXT_BUCKET = 16  # text lengths are padded to multiples of this
FRAME_CALL_WINDOWS = 2  # windows of frames per scan call: bounds the frames staged on the host / device at once
FEATURE_CALL_WINDOWS = 8  # windows of visual-token features per scan call
DECODE_CHUNK = 16  # tokens per compiled decode call (the streaming granularity)


def capacity(slots: int) -> int:
    """The memory capacity for ``slots`` filled slots: room for one padded text chunk more, in whole buckets."""
    return bucket(int(slots) + TEXT_BUCKET, SLOT_BUCKET)


def chunk_sizes(n: int, largest: int) -> list[int]:
    """Split ``n`` windows into scan calls of ``largest``, then halves (few compilations, no padded windows)."""
    sizes, size = [], largest
    while n:
        while size > n:
            size //= 2
        sizes.append(size)
        n -= size
    return sizes


# ---------------------------------------------------------------------------- rows


@dataclasses.dataclass(frozen=True)
class VideoInput:
    """One row's visual input, checked and not copied. ``data``: raw uint8 frames [F, H, W, 3] (resized and
    cropped per scan call), preprocessed float32 frames [F, 3, S, S], or visual-token features [N, D]."""

    data: np.ndarray
    from_pixels: bool  # frames (True) or features (False)

    @property
    def frames(self) -> int:
        return len(self.data) if self.from_pixels else 0

    def num_visual(self, beacon) -> int:
        return len(self.data) * beacon.tokens_per_frame if self.from_pixels else len(self.data)


def video_input(cfg, pixel_values=None, features=None) -> VideoInput | None:
    """Frames in any form the API takes (uint8 [F, H, W, 3] or one [H, W, 3]; float [F, 3, S, S] or one
    [3, S, S]), or ``features`` [N, D] -> :class:`VideoInput`; None when neither is given."""
    if features is not None:
        return VideoInput(np.asarray(features, np.float32), from_pixels=False)
    if pixel_values is None:
        return None
    px = np.asarray(pixel_values)
    v = cfg.vision
    if px.ndim in (3, 4) and px.dtype == np.uint8 and px.shape[-1] == 3:
        px = px if px.ndim == 4 else px[None]
        if px.shape[0] == 0 or min(px.shape[1:3]) < 1:
            raise ValueError(f"pixel_values has no frames or an empty frame size: {px.shape}")
        return VideoInput(px, from_pixels=True)
    px = px[None] if px.ndim == 3 else px
    if px.ndim != 4 or px.shape[1:] != (v.num_channels, v.image_size, v.image_size):
        raise ValueError(
            f"pixel_values must be float [F, {v.num_channels}, {v.image_size}, {v.image_size}] or uint8 "
            f"[F, H, W, 3], got {px.dtype} {px.shape}")
    if px.shape[0] == 0:
        raise ValueError("pixel_values has zero frames")
    return VideoInput(px.astype(np.float32, copy=False), from_pixels=True)


def stage_frames(cfg, rows: np.ndarray) -> np.ndarray:
    """The one resize rule: raw uint8 frames resized + center-cropped to the CLIP size (frames of that size
    already are returned as they are); float frames and features as they are."""
    return resize_crop_frames(rows, size=cfg.vision.image_size) if rows.dtype == np.uint8 else rows


@dataclasses.dataclass(frozen=True)
class Row:
    """One prompt: ``prefix`` ids, then ``video`` (or none), then ``text`` ids; or ``memory`` then ``text``."""

    text: np.ndarray  # int32 [T], T >= 1
    prefix: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int32))
    video: VideoInput | None = None
    memory: VideoMemory | None = None

    @staticmethod
    def from_prompt(input_ids, video: VideoInput | None = None, where: str = "") -> "Row":
        """1-D ids with one ``-200`` placeholder where ``video`` goes, or none (text only, no video)."""
        prefix, suffix = split_prompt(input_ids)
        if suffix is None:
            if video is not None:
                raise ValueError(f"{where}pixel_values given but input_ids have no -200 video placeholder")
            return Row(_nonempty(prefix, where))
        if video is None:
            raise ValueError(f"{where}input_ids contain the -200 video placeholder but no pixel_values were given")
        return Row(_nonempty(suffix, where), prefix, video)

    @staticmethod
    def over_memory(memory: VideoMemory | KVMemory, text_ids, where: str = "") -> "Row":
        """``text_ids`` (the text after the video, no placeholder) over a saved video memory (batch 1)."""
        if not isinstance(memory, VideoMemory):
            memory = VideoMemory(memory, np.zeros((0,), np.int32))
        if memory.kv.k.shape[1] != 1:
            raise ValueError(f"{where}each memory must hold one prompt (batch 1), got batch {memory.kv.k.shape[1]}")
        ids = np.asarray(text_ids)
        if (ids == IMAGE_TOKEN_INDEX).any():
            raise ValueError(f"{where}with memory=..., input_ids must be the text after the video (no -200 "
                             "placeholder)")
        return Row(_nonempty(ids.astype(np.int32), where), memory=memory)

    @property
    def seen(self) -> np.ndarray:
        """Every prompt id of the row (where the repetition penalty starts from)."""
        before = self.memory.prompt_ids if self.memory is not None else self.prefix
        return np.concatenate([before, self.text]).astype(np.int32)


def _nonempty(ids: np.ndarray, where: str) -> np.ndarray:
    if not len(ids):
        raise ValueError(f"{where}the prompt has no text after the video")
    return ids.astype(np.int32)


def padded_texts(texts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """B texts -> (ids int32 [B, T] zero-padded to a ``TEXT_BUCKET`` multiple, lengths int32 [B])."""
    n = np.array([len(t) for t in texts], np.int32)
    ids = np.zeros((len(texts), bucket(max(n.max(), 1), TEXT_BUCKET)), np.int32)
    for i, t in enumerate(texts):
        ids[i, :len(t)] = t
    return ids, n


def is_batch(input_ids) -> bool:
    """A list / tuple of 1-D id sequences (not one prompt given as a list of ints)."""
    return isinstance(input_ids, (list, tuple)) and len(input_ids) > 0 and all(np.ndim(x) == 1 for x in input_ids)


def rows_of_call(cfg, input_ids, pixel_values, memory, features=None) -> list[Row]:
    """The B prompts of an API call as rows: B texts over saved memories (``memory`` one for every row, or B),
    or B prompts with ``pixel_values`` None or B entries (None: text only)."""
    if not is_batch(input_ids):
        raise ValueError("with a list of memories, input_ids must be a list of 1-D id arrays (one per memory)")
    B = len(input_ids)
    where = (lambda i: f"prompt {i}: ") if B > 1 else (lambda i: "")
    if memory is not None:
        if pixel_values is not None and any(p is not None for p in pixel_values):
            raise ValueError("give pixel_values or memory, not both")
        mems = list(memory) if isinstance(memory, (list, tuple)) else [memory] * B
        if len(mems) != B:
            raise ValueError(f"{len(mems)} memories for {B} prompts")
        return [Row.over_memory(m, t, where(i)) for i, (m, t) in enumerate(zip(mems, input_ids))]
    if pixel_values is not None and not isinstance(pixel_values, (list, tuple)):
        raise ValueError("with a list of prompts, pixel_values must be a list (one entry per prompt, None for "
                         "text only) or None")
    pixels = list(pixel_values) if pixel_values is not None else [None] * B
    if len(pixels) != B:
        raise ValueError(f"{len(pixels)} pixel_values for {B} prompts")
    return [Row.from_prompt(ids, video_input(cfg, px, features), where(i))
            for i, (ids, px) in enumerate(zip(input_ids, pixels))]


@dataclasses.dataclass(frozen=True)
class Prompted:
    """What :meth:`InferenceCore.prompt` returns for B rows."""

    logits: jax.Array  # fp32 [B, T, V]: row b's text logits are [b, :n[b]]
    n: np.ndarray  # int32 [B] text lengths
    memory: KVMemory  # [B] rows after their texts
    ratios: tuple[int, ...]  # the ratio of each window (rows with a video share the schedule)

    def last(self) -> np.ndarray:
        """fp32 [B, V]: each row's logits at its last text position."""
        return np.asarray(self.logits[jnp.arange(len(self.n)), jnp.asarray(self.n - 1)], np.float32)

    def row_logits(self, b: int) -> np.ndarray:
        return np.asarray(self.logits[b, :int(self.n[b])], np.float32)


# ---------------------------------------------------------------------------- the core


class InferenceCore:
    """The model's compiled steps (:class:`~vxl_jax.infer.engine.Engine`) and the host logic around them."""

    def __init__(self, model, mesh=None):
        self.engine = Engine(model, mesh=mesh)
        self.cfg = model.cfg
        self.dtype = dtype_of(self.cfg.runtime.compute_dtype)

    def empty_memory(self, batch: int, slots: int) -> KVMemory:
        """A memory of ``batch`` rows with :func:`capacity` for ``slots`` filled slots."""
        return self._blank(batch, capacity(slots))

    def _blank(self, batch: int, cap: int) -> KVMemory:
        lm = self.cfg.lm
        return KVMemory.empty(lm.num_layers, batch, cap, lm.num_kv_heads, lm.head_dim, self.dtype)

    def text(self, mem: KVMemory, texts: Sequence[np.ndarray], kind: str = "text", donate: bool = False):
        """B texts (any lengths, 0 allowed) appended to the B rows of ``mem`` -> (fp32 logits [B, T, V], memory)."""
        ids, n = padded_texts(texts)
        return self.engine.text(mem, jnp.asarray(ids), jnp.asarray(n), kind=kind, donate=donate)

    def feed_windows(self, mem: KVMemory, videos: Sequence[VideoInput | None], ratios: tuple[int, ...], ratio_idx,
                     *, keep: bool = True, progress: bool = False) -> KVMemory:
        """Compress row b's video into row b of ``mem`` (donated), window by window: the one window-feeding loop.

        ``ratio_idx`` [W] picks each window's ratio in ``ratios`` (W: the longest video's windows; a row's
        windows past its video hold 0 tokens and append nothing; the last one may be partial). A few windows
        per compiled call; each call's rows are staged here (:func:`stage_frames`), so the host never holds a
        resized or float copy of a whole video. ``keep=False`` drops every beacon (ablation).
        """
        b = self.cfg.beacon
        from_pixels = {v.from_pixels for v in videos if v is not None}
        if len(from_pixels) != 1:
            raise ValueError("the videos of one call must all be frames or all be features")
        from_pixels, = from_pixels
        forms = {v.data.dtype == np.uint8 for v in videos if v is not None}
        if len(forms) > 1:
            raise ValueError("the videos of one batched call must be in one form (all uint8 or all float)")
        num_visual = np.array([0 if v is None else v.num_visual(b) for v in videos], np.int32)
        n_windows = len(ratio_idx)
        counts = np.asarray(window_token_counts(jnp.asarray(num_visual), n_windows, b.window))  # [W, B]
        per = b.frames_per_window if from_pixels else b.window
        bar = tqdm(total=n_windows, desc="windows", unit="win", disable=not progress, leave=False)
        start = 0
        for size in chunk_sizes(n_windows, FRAME_CALL_WINDOWS if from_pixels else FEATURE_CALL_WINDOWS):
            sl = slice(start, start + size)
            block = self._window_block(videos, start * per, size, per)
            mem = self.engine.windows(mem, block, jnp.asarray(counts[sl]), jnp.asarray(np.asarray(ratio_idx)[sl]),
                                      ratios=tuple(ratios), from_pixels=from_pixels, keep=keep)
            start += size
            bar.update(size)
        bar.close()
        return mem

    def _window_block(self, videos, first: int, windows: int, per: int) -> jax.Array:
        """Rows ``[first, first + windows * per)`` of each video, staged and zero-padded past its end ->
        device array [windows, B, per, *row] (uint8 frames stay uint8; float inputs in the compute dtype)."""
        parts = [None if v is None or len(v.data) <= first else stage_frames(self.cfg, v.data[first:first + windows * per])
                 for v in videos]
        shaped = next(p for p in parts if p is not None and len(p))
        block = np.zeros((len(videos), windows * per, *shaped.shape[1:]), shaped.dtype)
        for row, part in enumerate(parts):
            if part is not None and len(part):
                block[row, :len(part)] = part
        block = block.reshape(len(videos), windows, per, *shaped.shape[1:]).swapaxes(0, 1)
        return jnp.asarray(block, np.uint8 if shaped.dtype == np.uint8 else self.dtype)

    def schedule(self, videos: Sequence[VideoInput], ratio, rng) -> tuple[tuple[int, ...], np.ndarray]:
        """-> (distinct ratios, per-window index [W]) for the videos of one call. An int ratio for any number of
        videos; a list (step-random: one draw per window from ``rng``) for one video."""
        b = self.cfg.beacon
        longest = max(v.num_visual(b) for v in videos)
        if len(videos) > 1 and not isinstance(DEFAULT_RATIO if ratio is None else ratio, (int, np.integer)):
            raise ValueError("batched prompts with videos take one int ratio (step-random ratio lists: one call per "
                             "video, or sessions)")
        return ratio_schedule(b, ratio, longest, rng)

    def prompt(self, rows: Sequence[Row], ratio=None, *, rng: np.random.Generator | None = None, room: int = 0,
               keep: bool = True, progress: bool = False) -> Prompted:
        """B rows -> :class:`Prompted`: each row's memory (its saved memory, or its prefix and compressed video)
        followed by its text, and the text's logits. Rows sharing one saved memory, or one video array with one
        prefix, are encoded once. ``room``: slots to keep free after each row's text (tokens to generate).
        A saved memory is never donated (rows get copies)."""
        bases, index = _distinct_bases(rows)
        videos = [r.video for r in bases if r.memory is None and r.video is not None]
        ratios, ratio_idx = self.schedule(videos, ratio, rng) if videos else ((), np.zeros(0, np.int32))
        beacons = len(ratio_idx) * (self.cfg.beacon.window // min(ratios)) if videos else 0
        slots = max(_base_slots(base, beacons) + len(r.text) for base, r in zip((bases[i] for i in index), rows))
        cap = capacity(slots + room)
        saved = [i for i, base in enumerate(bases) if base.memory is not None]
        fresh = [i for i, base in enumerate(bases) if base.memory is None]
        parts = []
        if saved:  # copied by take_rows below: a saved memory is never donated
            parts.append(concat_rows([bases[i].memory.kv for i in saved], cap))
        if fresh:
            parts.append(self._encode([bases[i] for i in fresh], cap, ratios, ratio_idx, keep, progress))
        order = saved + fresh  # base i sits at batch row order.index(i) of the stacked bases
        rows_at = [order.index(i) for i in index]
        mem = parts[0] if len(parts) == 1 else concat_rows(parts, cap)
        if saved or rows_at != list(range(len(order))):
            mem = take_rows(mem, rows_at)
        logits, mem = self.text(mem, [r.text for r in rows], "text", donate=True)
        used = tuple(ratios[i] for i in ratio_idx)
        return Prompted(logits, np.array([len(r.text) for r in rows], np.int32), mem, used)

    def _encode(self, bases: Sequence[Row], cap: int, ratios, ratio_idx, keep: bool, progress: bool) -> KVMemory:
        """U rows' ``prefix || video`` -> a new memory [U, cap]."""
        mem = self._blank(len(bases), cap)
        if any(len(r.prefix) for r in bases):
            _, mem = self.text(mem, [r.prefix for r in bases], "prefix", donate=True)
        if any(r.video is not None for r in bases):
            mem = self.feed_windows(mem, [r.video for r in bases], ratios, ratio_idx, keep=keep, progress=progress)
        return mem

    def decode(self, mem: KVMemory, last, seen: Sequence[np.ndarray], *, params: SamplingParams, stops,
               max_new: int, seeds: Sequence[int], chunk: int = DECODE_CHUNK, return_logits: bool = False,
               on_chunk: Callable[[list[np.ndarray]], None] | None = None):
        """B rows in lockstep from their last prompt logits ``last`` [B, V] -> (B id arrays int32, B fp32
        [n_b, V] step-logit arrays or None, memory). ``seen``: the ids each row's repetition penalty starts from;
        ``seeds``: one PRNG seed per row; ``on_chunk``: called with each compiled call's new ids (B arrays)."""
        last = np.asarray(last, np.float32)
        vocab = last.shape[1]
        state = (jnp.asarray(last), jnp.stack([seen_mask(np.asarray(s), vocab) for s in seen]),
                 jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds]))
        stops = stop_mask(stops, vocab)
        out, step_logits = [[] for _ in seeds], [[] for _ in seeds]
        produced, done = np.zeros(len(seeds), np.int64), np.zeros(len(seeds), bool)
        while not done.all():
            remaining = np.where(done, 0, max_new - produced).astype(np.int32)
            toks, n, dn, mem, seen_, key, last_, lg = self.engine.decode(
                mem, *state, stops, jnp.asarray(remaining), params=params, chunk=chunk, return_logits=return_logits)
            state = (last_, seen_, key)
            toks, n, done = np.asarray(toks), np.asarray(n), np.asarray(dn).copy()
            lg = np.asarray(lg, np.float32) if return_logits else None
            new = [toks[b, :n[b]].astype(np.int32) for b in range(len(seeds))]
            for b, ids in enumerate(new):
                out[b].append(ids)
                if return_logits:
                    step_logits[b].append(lg[b, :n[b]])
            produced += n
            if on_chunk is not None:
                on_chunk(new)
        logits = [np.concatenate(s) for s in step_logits] if return_logits else None
        return [np.concatenate(o) for o in out], logits, mem


def _distinct_bases(rows: Sequence[Row]) -> tuple[list[Row], list[int]]:
    """-> (the distinct bases of the rows: one per saved memory object, one per (video array, prefix) pair, in
    first-seen order; each row's base index). Text-only rows share one empty base."""
    keys: dict = {}
    bases, index = [], []
    for r in rows:
        if r.memory is not None:
            key = ("memory", id(r.memory.kv))
        else:
            key = ("video", None if r.video is None else id(r.video.data), r.prefix.tobytes())
        if key not in keys:
            keys[key] = len(bases)
            bases.append(r)
        index.append(keys[key])
    return bases, index


def _base_slots(base: Row, beacons: int) -> int:
    """Slots a base fills before its text: a saved memory's length, or the prefix and at most ``beacons``."""
    if base.memory is not None:
        return int(np.asarray(base.memory.kv.length)[0])
    return len(base.prefix) + (beacons if base.video is not None else 0)
