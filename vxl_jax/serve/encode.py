"""Encoding one video for the scheduler, one window-scan call at a time.

A reader thread decodes the video's frames (the sampling ``infer.py`` uses: ``VideoStream`` with ``num_frames``
or ``fps``, resized + center-cropped as decoded) one scan call's worth at a time into a small queue; the model
thread calls :meth:`EncodeJob.step` between decode chunks, and each step is one of the session steps of
:mod:`vxl_jax.infer.session` over the inference core: the prefix (``start``), one chunk of complete windows
(``add_frames``: one window-scan call), or, at the end, the frames of the last partial window
(``video_memory``). The result is the video memory a whole-prompt ``prefill`` builds (sessions give the same
memory for any chunking).
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

import numpy as np

from vxl_jax.infer import session
from vxl_jax.infer.core import FRAME_CALL_WINDOWS, InferenceCore
from vxl_jax.infer.results import VideoMemory
from vxl_jax.media.video import VideoStream

_END = object()


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class EncodeJob:
    """The encoding of one video (``video``: a :class:`~vxl_jax.serve.requests.VideoRef`) after ``prefix_ids``.
    ``waiters``: the scheduler's requests waiting for it. ``wake``: called when the reader has a chunk ready."""

    def __init__(self, core: InferenceCore, key: str, video, prefix_ids, frames: int | None,
                 wake: Callable[[], None]):
        self.core, self.key, self.video = core, key, video
        self.prefix = np.asarray(prefix_ids, np.int32)
        self.waiters: list = []
        self.result: VideoMemory | None = None
        self.error: str | None = None
        self.steps = 0
        self._state = None
        self._chunks: queue.Queue = queue.Queue(maxsize=2)
        self._abort = threading.Event()
        self._wake = wake
        self._reader = threading.Thread(target=self._read, args=(frames,), name=f"vxl-frames-{key[:8]}", daemon=True)
        self._reader.start()

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None

    @property
    def can_step(self) -> bool:
        """A step would do work now (else the reader is still decoding)."""
        return not self.finished and (self._state is None or not self._chunks.empty())

    def _read(self, frames: int | None) -> None:
        v, b = self.video, self.core.cfg.beacon
        try:
            stream = VideoStream(v.path, num_frames=frames, fps=v.fps, size=self.core.cfg.vision.image_size,
                                 batch=FRAME_CALL_WINDOWS * b.frames_per_window)
            for chunk in stream:
                if not self._put(chunk):
                    return
            self._put(_END)
        except Exception as e:  # a bad video ends this job only
            self._put(e)

    def _put(self, item) -> bool:
        while not self._abort.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
            except queue.Full:
                continue
            self._wake()
            return True
        return False

    def step(self) -> bool:
        """At most one model call (the prefix, one window-scan call, or the last partial window) -> whether one
        ran. Errors end the job (``error``: one line)."""
        if not self.can_step:
            return False
        try:
            if self._state is None:
                self._state = session.start(self.core, self.prefix, self.video.ratio)
                return True
            item = self._chunks.get_nowait()
            if item is _END:
                self.result, _ = session.video_memory(self.core, self._state)
                self._state = None
            elif isinstance(item, BaseException):
                self.error = one_line(item)
            else:
                self._state = session.add_frames(self.core, self._state, item)
            return True
        except Exception as e:
            self.error = one_line(e)
            return True
        finally:
            self.steps += 1

    def abort(self) -> None:
        """Stop the reader (nobody waits for this video any more)."""
        self._abort.set()
        self.error = self.error or "cancelled"
