"""Incremental ingestion: a video fed to the compressed memory a few frames at a time, questioned at any point.

    s = vx.session(prefix_ids, ratio=8)     # text ids before the video
    s.add_frames(frames)                     # any number of frames; complete windows are compressed at once
    s.prefill(suffix_ids).logits             # the text after the video seen so far: [S, vocab] fp32
    s.generate(suffix_ids, max_new_tokens=32)
    s.add_frames(more_frames)                # asking changed nothing: the video continues
    s.save("cam.session"); s = vx.load_session("cam.session")

The runtime state is explicit: :class:`SessionState` (memory of every *complete* window, the frames of
the incomplete last window still pending, the step-random generator's state). :class:`Session` only
pairs a state with the model; every step is a function ``(core, state, ...) -> state`` over the
inference core (:class:`vxl_jax.infer.core.InferenceCore`), whose window loop compresses the frames.

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

import numpy as np

from vxl_jax.beacon.memory import KVMemory, drop_text, grow, take_rows
from vxl_jax.beacon.ratios import ORIGINAL_RATIO_SEED, check_ratio, pick_ratio
from vxl_jax.infer import memory_file
from vxl_jax.infer.core import TEXT_BUCKET, InferenceCore, Row, VideoInput, capacity, stage_frames, video_input
from vxl_jax.infer.results import PrefillResult, VideoMemory

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


def start(core: InferenceCore, prefix_ids, ratio=None, seed: int = DEFAULT_SEED) -> SessionState:
    """A session whose prompt starts with ``prefix_ids`` (1-D ids before the video; no -200)."""
    prefix = np.asarray(prefix_ids if prefix_ids is not None else [], np.int64).reshape(-1)
    if (prefix < 0).any():
        raise ValueError("prefix_ids must be the token ids before the video (no -200 placeholder, no negative ids)")
    prefix = prefix.astype(np.int32)
    ratio = check_ratio(core.cfg.beacon, ratio)
    rng_state = None if isinstance(ratio, int) else np.random.default_rng(seed).bit_generator.state
    kv = core.empty_memory(1, len(prefix) + core.cfg.beacon.window // _min_ratio(ratio) + TEXT_BUCKET)
    if len(prefix):
        _, kv = core.text(kv, [prefix], "prefix", donate=True)
    return SessionState(kv, prefix, None, 0, ratio, rng_state)


def _min_ratio(ratio) -> int:
    return ratio if isinstance(ratio, int) else min(ratio)


def _pick(ratio, rng_state, stride: int, window_index: int) -> tuple[int, dict | None]:
    """The ratio of a window of ``stride`` visual tokens -> (ratio, generator state after the draw)."""
    if isinstance(ratio, int):
        return ratio, None
    rng = np.random.default_rng()
    rng.bit_generator.state = rng_state
    r = pick_ratio(ratio, stride, window_index, rng)
    return r, rng.bit_generator.state


def _grow(kv: KVMemory, slots: int) -> KVMemory:
    """Room for ``slots`` filled slots (:func:`~vxl_jax.infer.core.capacity`), growing geometrically (few
    distinct capacities over a long stream: few compilations)."""
    need = capacity(slots)
    return kv if kv.capacity >= need else grow(kv, max(need, 2 * kv.capacity))


def _compress(core: InferenceCore, kv: KVMemory, rows: np.ndarray, picks) -> KVMemory:
    """``rows`` (staged frames of len(picks) windows, the last one possibly partial) compressed with the
    ratios ``picks`` through the core's window loop -> memory (donated)."""
    distinct = tuple(sorted(set(picks)))
    idx = np.array([distinct.index(r) for r in picks], np.int32)
    return core.feed_windows(kv, [VideoInput(rows, from_pixels=True)], distinct, idx)


def check_finite(values, what: str = "pixel_values") -> None:
    """``ValueError`` naming how many values are NaN / infinite in float ``values`` (a list: each entry; None and
    integer arrays pass): such frames or features would silently turn every answer into garbage."""
    if values is None:
        return
    if isinstance(values, (list, tuple)):
        for i, v in enumerate(values):
            check_finite(v, f"{what}[{i}]")
        return
    a = np.asarray(values)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
        raise ValueError(f"{what} has {nan} NaN and {inf} infinite values (of {a.size}); frames must be finite")


def add_frames(core: InferenceCore, state: SessionState, pixel_values) -> SessionState:
    """Append frames; every window they complete is compressed now (its memory is donated: keep no
    reference to the old state's ``kv``)."""
    check_finite(pixel_values)
    rows = stage_frames(core.cfg, video_input(core.cfg, pixel_values).data)
    added = len(rows)
    pending = state.pending
    if pending is not None and len(pending) and (pending.dtype != rows.dtype or pending.shape[1:] != rows.shape[1:]):
        raise ValueError(f"frames must keep one form within a session: pending frames are {pending.dtype} "
                         f"{pending.shape[1:]}, new ones {rows.dtype} {rows.shape[1:]}")
    if pending is not None and len(pending):
        rows = np.concatenate([pending, rows])
    b = core.cfg.beacon
    per = b.frames_per_window
    complete = len(rows) // per
    rng_state, picks = state.rng_state, []
    for w in range(complete):
        r, rng_state = _pick(state.ratio, rng_state, b.window, state.windows + w)
        picks.append(r)
    kv = state.kv
    if complete:
        kv = _grow(kv, int(np.asarray(kv.length)[0]) + sum(b.window // r for r in picks))
        kv = _compress(core, kv, rows[:complete * per], picks)
    rest = rows[complete * per:]
    pending = np.array(rest) if len(rest) else rows[:0].copy()  # own copy: the caller's array may change
    return dataclasses.replace(state, kv=kv, pending=pending, frames=state.frames + added, rng_state=rng_state,
                               ratios=state.ratios + tuple(picks))


def video_memory(core: InferenceCore, state: SessionState, fresh: bool = False):
    """-> (VideoMemory of the video so far, per-window ratios). The pending frames are compressed as a clipped
    last window into a copy of the memory; the state is unchanged. ``fresh``: the memory shares no buffer with
    the session's (the core copies a saved memory before writing to it, so asking needs no copy here)."""
    b = core.cfg.beacon
    length = int(np.asarray(state.kv.length)[0])
    ratios, kv = state.ratios, state.kv
    if state.pending_frames:
        n_valid = state.pending_frames * b.tokens_per_frame
        r, _ = _pick(state.ratio, state.rng_state, n_valid, state.windows)
        copy = take_rows(kv, [0], max(kv.capacity, capacity(length + n_valid // r)))
        kv = _compress(core, copy, state.pending, [r])
        ratios += (r,)
    elif fresh:
        kv = take_rows(kv, [0])
    visual = state.frames * b.tokens_per_frame
    return VideoMemory(kv, state.prompt_ids, state.frames, visual), ratios


def prefill(core: InferenceCore, state: SessionState, suffix_ids) -> PrefillResult:
    """Logits of ``suffix_ids`` (the text after the video seen so far) -> ``PrefillResult``."""
    suffix = _suffix(suffix_ids)
    vm, ratios = video_memory(core, state)
    p = core.prompt([Row.over_memory(vm, suffix)])
    video = dataclasses.replace(vm, kv=drop_text(p.memory, len(suffix)))  # shares the result's K/V (append-only)
    return PrefillResult(p.row_logits(0), p.memory, video, ratios)


def _suffix(suffix_ids) -> np.ndarray:
    ids = np.asarray(suffix_ids, np.int64).reshape(-1)
    if (ids < 0).any():
        raise ValueError("suffix_ids must be the text after the video (no -200 placeholder, no negative ids)")
    if not len(ids):
        raise ValueError("suffix_ids is empty: ask with at least one token")
    return ids.astype(np.int32)


# ---------------------------------------------------------------------------- persistence


def save(core: InferenceCore, state: SessionState, path, fingerprint: str) -> None:
    """One safetensors file: the memory's valid slots (readable by ``VideoXL.load_memory`` as the video memory of
    the complete windows) and the pending frames, with the session's ratio and generator state."""
    done = state.frames - state.pending_frames
    session = {"ratio": state.ratio if isinstance(state.ratio, int) else list(state.ratio),
               "rng_state": state.rng_state, "ratios": list(state.ratios), "frames": state.frames,
               "pending_form": None if state.pending is None else str(state.pending.dtype)}
    tensors = {"pending": np.ascontiguousarray(state.pending)} if state.pending_frames else {}
    facts = memory_file.video_facts(state.prompt_ids, done, done * core.cfg.beacon.tokens_per_frame)
    memory_file.save_memory(path, state.kv, core.cfg, extra=facts, fingerprint=fingerprint, tensors=tensors,
                            meta={"session": session})


def load(core: InferenceCore, path, fingerprint: str, ratio=None, seed: int = DEFAULT_SEED) -> SessionState:
    """Read :func:`save`'s file (or a plain video memory file: a session continuing that video memory, with
    ``ratio`` for its next windows). Refused (``MemoryMismatchError``) if another model made it."""
    kv, meta, arrays = memory_file.read_memory_file(path, core.cfg, dtype=core.dtype, fingerprint=fingerprint)
    extra = meta.get("extra", {})
    prompt_ids = np.asarray(extra.get("prompt_ids", []), np.int32)
    sess = meta.get("session")
    if sess is None:  # a video memory: continue it
        r = check_ratio(core.cfg.beacon, ratio)
        rng_state = None if isinstance(r, int) else np.random.default_rng(seed).bit_generator.state
        windows = core.cfg.beacon.num_windows(int(extra.get("visual_tokens", 0)))
        return SessionState(kv, prompt_ids, None, int(extra.get("frames", 0)), r, rng_state, (0,) * windows)
    r = sess["ratio"] if isinstance(sess["ratio"], int) else tuple(sess["ratio"])
    if ratio is not None and check_ratio(core.cfg.beacon, ratio) != r:
        raise ValueError(f"session {path} was made with ratio {r}, not {ratio}")
    pending = arrays.get("pending")
    if pending is None and sess.get("pending_form"):
        pending = np.zeros((0, *_form_shape(core.cfg, sess["pending_form"])), sess["pending_form"])
    return SessionState(kv, prompt_ids, pending, int(sess["frames"]), r, sess["rng_state"], tuple(sess["ratios"]))


def _form_shape(cfg, dtype: str) -> tuple[int, ...]:
    s = cfg.vision.image_size
    return (s, s, 3) if dtype == "uint8" else (cfg.vision.num_channels, s, s)


# ---------------------------------------------------------------------------- the user-facing object


class Session:
    """A model and a :class:`SessionState` (``.state``, replaced by each ``add_frames``)."""

    def __init__(self, vx, state: SessionState):
        self.vx, self.state = vx, state

    def add_frames(self, pixel_values) -> "Session":
        self.state = add_frames(self.vx.core, self.state, pixel_values)
        return self

    def prefill(self, suffix_ids) -> PrefillResult:
        return prefill(self.vx.core, self.state, suffix_ids)

    def generate(self, suffix_ids, max_new_tokens: int | None = None, **kwargs):
        """New ids for ``suffix_ids`` after the video seen so far (keywords as ``VideoXL.generate``)."""
        vm, _ = video_memory(self.vx.core, self.state)
        return self.vx.generate(_suffix(suffix_ids), None, max_new_tokens=max_new_tokens, memory=vm, **kwargs)

    def video_memory(self) -> VideoMemory:
        """The video so far as a ``VideoMemory`` of its own (for ``VideoXL.generate(..., memory=...)`` or
        ``save_memory``); adding frames later leaves it as it is."""
        return video_memory(self.vx.core, self.state, fresh=True)[0]

    def save(self, path) -> None:
        save(self.vx.core, self.state, path, self.vx.fingerprint())

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
