"""Incremental ingestion: a video fed to the compressed memory a few frames at a time, questioned at any point.

    s = vx.session(prefix_ids, ratio=8)     # text ids before the video
    s.add_frames(frames)                     # any number of frames; complete windows are compressed at once
    s.prefill(suffix_ids).logits             # the text after the video seen so far: [S, vocab] fp32
    s.generate(suffix_ids, max_new_tokens=32)
    s.add_frames(more_frames)                # asking changed nothing: the video continues
    s.save("cam.session"); s = vx.load_session("cam.session")

The runtime state is explicit: :class:`SessionState` (memory of every *complete* window, the frames of
the incomplete last window still pending, the step-random generator's state). :class:`Session` only
pairs a state with the model; every step is a function ``(vx, state, ...) -> state``.

Asking compresses the pending frames as the original's clipped last window (``n < window`` visual
tokens, ``n // r`` beacons kept) into a *copy* of the memory, so the same frames are compressed again,
as part of a complete window, once the rest of that window arrives. Adding the same frames in any
chunking gives the memory and logits of one ``VideoXL.prefill`` (same per-window computation).

Step-random mode (``ratio`` a list) draws each window's ratio from the session's own
``numpy.random.default_rng(seed)`` (seed 42, as the original): one draw per complete window, in order;
the pending window's draw is made from a copy of the generator when asked, so it is redrawn (as the
first draw after the complete windows) for later questions and for the window once complete.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from vxl_jax.beacon.ratios import ORIGINAL_RATIO_SEED, check_ratio, pick_ratio
from vxl_jax.beacon.memory import KVMemory
from vxl_jax.infer.memory_file import FORMAT, _geometry, load_memory
from vxl_jax.media.preprocess import resize_crop_frames
from vxl_jax.infer.results import FRAME_CALL_WINDOWS, TEXT_BUCKET, PrefillResult, VideoMemory, ensure_capacity

DEFAULT_SEED = ORIGINAL_RATIO_SEED  # the original's step-random generator: numpy default_rng(42)


@dataclasses.dataclass(frozen=True)
class SessionState:
    """Everything a session holds (batch 1).

    kv: memory ``[prefix || beacons of every complete window]``.
    pending: frames of the incomplete last window as window inputs (uint8 [n, S, S, 3] resized + cropped,
    or float32 [n, 3, S, S] preprocessed), n < frames_per_window; None before the first frame.
    """

    kv: KVMemory
    prompt_ids: np.ndarray  # int32 [P]
    pending: np.ndarray | None
    frames: int  # frames added so far (pending included)
    ratio: int | tuple[int, ...]
    rng_state: dict | None  # numpy bit-generator state (step-random mode), else None
    ratios: tuple[int, ...] = ()  # the ratio used for each complete window

    @property
    def windows(self) -> int:
        return len(self.ratios)

    @property
    def pending_frames(self) -> int:
        return 0 if self.pending is None else len(self.pending)


# ---------------------------------------------------------------------------- pure steps


def start(vx, prefix_ids, ratio=None, seed: int = DEFAULT_SEED) -> SessionState:
    """A session whose prompt starts with ``prefix_ids`` (1-D ids before the video; no -200)."""
    prefix = np.asarray(prefix_ids if prefix_ids is not None else [], np.int64).reshape(-1)
    if (prefix < 0).any():
        raise ValueError("prefix_ids must be the token ids before the video (no -200 placeholder, no negative ids)")
    prefix = prefix.astype(np.int32)
    ratio = check_ratio(vx.cfg.beacon, ratio)
    rng_state = None if isinstance(ratio, int) else np.random.default_rng(seed).bit_generator.state
    b = vx.cfg.beacon
    kv = vx._empty_memory(len(prefix) + b.window // _min_ratio(ratio) + 2 * TEXT_BUCKET)
    if len(prefix):
        _, kv = vx._text(kv, prefix, "prefix", donate=True)
    return SessionState(kv, prefix, None, 0, ratio, rng_state)


def _min_ratio(ratio) -> int:
    return ratio if isinstance(ratio, int) else min(ratio)


def _window_rows(vx, pixel_values) -> np.ndarray:
    """Frames in any form ``prefill`` accepts -> window input rows (uint8 [F, S, S, 3] or float32 [F, 3, S, S])."""
    px = vx._pixels(pixel_values, keep_uint8=True)
    if px.dtype == np.uint8:
        return resize_crop_frames(px, size=vx.cfg.vision.image_size)
    return px


def _pick(ratio, rng_state, stride: int, window_index: int) -> tuple[int, dict | None]:
    """The ratio of a window of ``stride`` visual tokens -> (ratio, generator state after the draw)."""
    if isinstance(ratio, int):
        return ratio, None
    rng = np.random.default_rng()
    rng.bit_generator.state = rng_state
    r = pick_ratio(ratio, stride, window_index, rng)
    return r, rng.bit_generator.state


def _grow(kv: KVMemory, slots: int) -> KVMemory:
    """At least ``slots`` capacity; grows geometrically (few distinct capacities: few compilations)."""
    return kv if kv.capacity >= slots else ensure_capacity(kv, max(slots, 2 * kv.capacity))


def _compress(vx, kv: KVMemory, rows: np.ndarray, counts, picks) -> KVMemory:
    """Windows of input ``rows`` (len(counts) * frames_per_window rows, zero-padded here) -> memory (donated)."""
    b = vx.cfg.beacon
    per = b.frames_per_window
    n = len(counts)
    if len(rows) < n * per:
        rows = np.concatenate([rows, np.zeros((n * per - len(rows), *rows.shape[1:]), rows.dtype)])
    dtype = np.uint8 if rows.dtype == np.uint8 else vx._dtype
    inputs = jnp.asarray(rows.reshape(n, 1, per, *rows.shape[1:]), dtype)
    distinct = tuple(sorted(set(picks)))
    idx = np.array([distinct.index(r) for r in picks], np.int32)
    return vx.engine.windows(kv, inputs, jnp.asarray(np.asarray(counts, np.int32)[:, None]), jnp.asarray(idx),
                             ratios=distinct, from_pixels=True)


def add_frames(vx, state: SessionState, pixel_values) -> SessionState:
    """Append frames; every window they complete is compressed now (its memory is donated: keep no
    reference to the old state's ``kv``)."""
    rows = _window_rows(vx, pixel_values)
    added = len(rows)
    pending = state.pending
    if pending is not None and len(pending) and (pending.dtype != rows.dtype or pending.shape[1:] != rows.shape[1:]):
        raise ValueError(f"frames must keep one form within a session: pending frames are {pending.dtype} "
                         f"{pending.shape[1:]}, new ones {rows.dtype} {rows.shape[1:]}")
    if pending is not None and len(pending):
        rows = np.concatenate([pending, rows])
    b = vx.cfg.beacon
    per = b.frames_per_window
    complete = len(rows) // per
    kv, rng_state, ratios = state.kv, state.rng_state, state.ratios
    done = 0
    while done < complete:
        n = min(FRAME_CALL_WINDOWS, complete - done)
        picks = []
        for w in range(n):
            r, rng_state = _pick(state.ratio, rng_state, b.window, len(ratios) + w)
            picks.append(r)
        kv = _grow(kv, int(np.asarray(kv.length)[0]) + sum(b.window // r for r in picks) + 2 * TEXT_BUCKET)
        kv = _compress(vx, kv, rows[done * per:(done + n) * per], [b.window] * n, picks)
        ratios += tuple(picks)
        done += n
    rest = rows[complete * per:]
    pending = np.array(rest) if len(rest) else rows[:0].copy()  # own copy: the caller's array may change
    return dataclasses.replace(state, kv=kv, pending=pending, frames=state.frames + added, rng_state=rng_state,
                               ratios=ratios)


def _fresh(kv: KVMemory, session_kv: KVMemory) -> KVMemory:
    """``kv`` with every buffer it shares with the session's memory copied (steps donate their memory)."""
    return jax.tree.map(lambda new, old: jnp.array(new, copy=True) if new is old else new, kv, session_kv)


def video_memory(vx, state: SessionState, extra_slots: int = 0, fresh: bool = False):
    """-> (VideoMemory of the video so far, per-window ratios). The pending frames are compressed as a clipped
    last window into a copy of the memory; the state is unchanged. ``extra_slots``: room for text after it.
    ``fresh``: the memory shares no buffer with the session's (it may be donated)."""
    b = vx.cfg.beacon
    length = int(np.asarray(state.kv.length)[0])
    ratios = state.ratios
    kv = state.kv
    if state.pending_frames:
        n_valid = state.pending_frames * b.tokens_per_frame
        r, _ = _pick(state.ratio, state.rng_state, n_valid, state.windows)
        need = length + n_valid // r + extra_slots
        kv = _compress(vx, _fresh(_grow(kv, need), state.kv), state.pending, [n_valid], [r])
        ratios += (r,)
    else:
        kv = _grow(kv, length + extra_slots)
        kv = _fresh(kv, state.kv) if fresh else kv
    visual = state.frames * b.tokens_per_frame
    return VideoMemory(kv, state.prompt_ids, state.frames, visual), ratios


def prefill(vx, state: SessionState, suffix_ids):
    """Logits of ``suffix_ids`` (the text after the video seen so far) -> ``PrefillResult``."""
    suffix = _suffix(suffix_ids)
    vm, ratios = video_memory(vx, state, extra_slots=len(suffix) + TEXT_BUCKET, fresh=True)
    logits, mem = vx._text(vm.kv, suffix, "text", donate=True)
    # the video memory shares the result's K/V (append-only), as in VideoXL.prefill
    n = len(suffix)
    vm = dataclasses.replace(vm, kv=mem.replace(length=mem.length - n, n_text=mem.n_text - n))
    return PrefillResult(np.asarray(logits, np.float32), mem, vm, ratios)


def generate(vx, state: SessionState, suffix_ids, max_new_tokens: int | None = None, **kwargs):
    """New ids for ``suffix_ids`` after the video seen so far (keywords as ``VideoXL.generate``)."""
    suffix = _suffix(suffix_ids)
    vm, _ = video_memory(vx, state)
    return vx.generate(suffix, None, max_new_tokens=max_new_tokens, memory=vm, **kwargs)


def _suffix(suffix_ids) -> np.ndarray:
    ids = np.asarray(suffix_ids, np.int64).reshape(-1)
    if (ids < 0).any():
        raise ValueError("suffix_ids must be the text after the video (no -200 placeholder, no negative ids)")
    if not len(ids):
        raise ValueError("suffix_ids is empty: ask with at least one token")
    return ids.astype(np.int32)


# ---------------------------------------------------------------------------- persistence


def save(vx, state: SessionState, path) -> None:
    """One safetensors file: the memory's valid slots (readable by ``VideoXL.load_memory`` as the video memory of
    the complete windows) and the pending frames, with the session's ratio and generator state."""
    from safetensors.numpy import save_file

    kv = state.kv
    n = int(np.asarray(kv.length)[0])
    tensors = {"k": np.asarray(kv.k[:, 0, :n].astype(jnp.float32)), "v": np.asarray(kv.v[:, 0, :n].astype(jnp.float32))}
    if state.pending_frames:
        tensors["pending"] = np.ascontiguousarray(state.pending)
    extra = {"prompt_ids": [int(i) for i in state.prompt_ids], "frames": state.frames - state.pending_frames,
             "visual_tokens": (state.frames - state.pending_frames) * vx.cfg.beacon.tokens_per_frame}
    session = {"ratio": state.ratio if isinstance(state.ratio, int) else list(state.ratio),
               "rng_state": state.rng_state, "ratios": list(state.ratios), "frames": state.frames,
               "pending_form": None if state.pending is None else str(state.pending.dtype)}
    meta = {"format": FORMAT, "geometry": _geometry(vx.cfg), "dtype": str(kv.k.dtype), "sizes": kv.host_sizes(),
            "extra": extra, "model_fingerprint": vx.fingerprint(), "session": session}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, str(path), metadata={"vxl": json.dumps(meta)})


def load(vx, path, ratio=None, seed: int = DEFAULT_SEED) -> SessionState:
    """Read :func:`save`'s file (or a plain ``save_memory`` file: a session continuing that video memory, with
    ``ratio`` for its next windows). Refused (``MemoryMismatchError``) if another model made it."""
    from safetensors import safe_open

    kv, extra = load_memory(path, vx.cfg, dtype=vx._dtype, fingerprint=vx.fingerprint())
    with safe_open(str(path), "np") as f:
        meta = json.loads((f.metadata() or {}).get("vxl", "{}"))
        pending = f.get_tensor("pending") if "pending" in f.keys() else None
    prompt_ids = np.asarray(extra.get("prompt_ids", []), np.int32)
    sess = meta.get("session")
    if sess is None:  # a video memory: continue it
        r = check_ratio(vx.cfg.beacon, ratio)
        rng_state = None if isinstance(r, int) else np.random.default_rng(seed).bit_generator.state
        windows = vx.cfg.beacon.num_windows(int(extra.get("visual_tokens", 0)))
        return SessionState(kv, prompt_ids, None, int(extra.get("frames", 0)), r, rng_state, (0,) * windows)
    r = sess["ratio"] if isinstance(sess["ratio"], int) else tuple(sess["ratio"])
    if ratio is not None and check_ratio(vx.cfg.beacon, ratio) != r:
        raise ValueError(f"session {path} was made with ratio {r}, not {ratio}")
    if pending is None and sess.get("pending_form"):
        pending = np.zeros((0, *_form_shape(vx, sess["pending_form"])), sess["pending_form"])
    return SessionState(kv, prompt_ids, pending, int(sess["frames"]), r, sess["rng_state"], tuple(sess["ratios"]))


def _form_shape(vx, dtype: str) -> tuple[int, ...]:
    s = vx.cfg.vision.image_size
    return (s, s, 3) if dtype == "uint8" else (vx.cfg.vision.num_channels, s, s)


# ---------------------------------------------------------------------------- the user-facing object


class Session:
    """A model and a :class:`SessionState` (``.state``, replaced by each ``add_frames``)."""

    def __init__(self, vx, state: SessionState):
        self.vx, self.state = vx, state

    def add_frames(self, pixel_values) -> "Session":
        self.state = add_frames(self.vx, self.state, pixel_values)
        return self

    def prefill(self, suffix_ids):
        return prefill(self.vx, self.state, suffix_ids)

    def generate(self, suffix_ids, max_new_tokens: int | None = None, **kwargs):
        return generate(self.vx, self.state, suffix_ids, max_new_tokens, **kwargs)

    def video_memory(self):
        """The video so far as a ``VideoMemory`` of its own (for ``VideoXL.generate(..., memory=...)`` or
        ``save_memory``); adding frames later leaves it as it is."""
        return video_memory(self.vx, self.state, fresh=True)[0]

    def save(self, path) -> None:
        save(self.vx, self.state, path)

    @property
    def frames(self) -> int:
        return self.state.frames

    @property
    def sizes(self) -> dict:
        """Memory slots of the complete windows (pending frames are not compressed yet)."""
        return self.state.kv.host_sizes()

    def __repr__(self) -> str:
        st = self.state
        return (f"Session(frames={st.frames}, windows={st.windows}, pending_frames={st.pending_frames}, "
                f"ratio={st.ratio}, memory={self.sizes})")
