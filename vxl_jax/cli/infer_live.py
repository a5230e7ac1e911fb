"""``infer.py --live``: the reader threads (raw RGB24 frames from a pipe or growing file, questions from stdin)
and the frames they queue, added to the session a whole window at a time between questions."""

from __future__ import annotations

import argparse
import queue
import sys
import threading
from collections.abc import Callable, Iterator

import numpy as np

from vxl_jax.cli.infer_report import log
from vxl_jax.media.video import fps_step, read_raw_frames


def start_live_readers(a: argparse.Namespace) -> tuple[queue.Queue, queue.Queue]:
    """Start the daemon threads reading --live frames (every ``fps_step(live_fps, fps)``-th kept) and the
    questions on stdin (after ``--question``, if given) -> (frames queue, questions queue); each ends with None.
    The frames queue holds at most ``--live-buffer`` frames: when it is full the reader waits (back-pressure)."""
    step = fps_step(a.live_fps, a.fps) if a.fps else 1
    frames_q: queue.Queue = queue.Queue(maxsize=a.live_buffer)
    questions_q: queue.Queue = queue.Queue()
    if a.question:
        questions_q.put(a.question)
    threading.Thread(target=_read_frames, args=(a, step, frames_q), daemon=True).start()
    threading.Thread(target=_read_questions, args=(questions_q,), daemon=True).start()
    return frames_q, questions_q


def _read_frames(a: argparse.Namespace, step: int, frames_q: queue.Queue) -> None:
    """Queue every ``step``-th frame of the --live stream (uint8 [H, W, 3]), then None (a read error: the
    :class:`LiveStreamError` instead, raised by :meth:`LiveVideo.ingest`)."""
    width, height = a.live_size
    behind = False
    try:
        frames = read_raw_frames(a.live, width, height, follow=a.live_idle,
                                 on_partial=lambda m: log(f"warning: --live: {m}"))
        for i, frame in enumerate(frames):
            if i % step:
                continue
            if frames_q.full() and not behind:
                behind = True
                log(f"--live: {a.live_buffer} frames waiting for the model (--live-buffer); the stream is now "
                    f"read at the model's pace")
            frames_q.put(frame)
    except OSError as e:
        frames_q.put(LiveStreamError(f"cannot read --live {a.live}: {e.strerror or e}"))
        return
    frames_q.put(None)


class LiveStreamError(ValueError):
    """The --live stream could not be read (bad input: one line, exit 2)."""


def _read_questions(questions_q: queue.Queue) -> None:
    """Queue each non-blank line of stdin (stripped), then None."""
    for line in sys.stdin:
        if line.strip():
            questions_q.put(line.strip())
    questions_q.put(None)


class LiveVideo:
    """Frames from the reader queue handed to ``add`` (e.g. a session's ``add_frames``) a whole window (``per``
    frames, as uint8 [per, H, W, 3]) at a time, and the rest before each question."""

    def __init__(self, frames_q: queue.Queue, add: Callable[[np.ndarray], None], per: int):
        self.frames_q, self.add, self.per = frames_q, add, per
        self.pending: list = []
        self.done = False  # the reader reached the end of the stream

    def ingest(self, block: bool) -> None:
        """Take the queued frames (``block``: wait briefly for the first), adding each full window."""
        while not self.done:
            try:
                frame = self.frames_q.get(timeout=0.05) if block else self.frames_q.get_nowait()
            except queue.Empty:
                break
            if isinstance(frame, LiveStreamError):
                raise frame
            if frame is None:
                self.done = True
            else:
                self.pending.append(frame)
            if len(self.pending) >= self.per:
                self.flush()

    def flush(self) -> None:
        """Add the frames taken so far (a partial window before a question)."""
        if self.pending:
            self.add(np.stack(self.pending))
            self.pending.clear()

    def questions(self, questions_q: queue.Queue) -> Iterator[str]:
        """Each question of ``questions_q`` (until its None), after the frames taken so far are added (the last
        ones as a partial window); frames are taken from the queue while waiting for questions."""
        while True:
            self.ingest(block=False)
            try:
                question = questions_q.get(timeout=0.05)
            except queue.Empty:
                self.ingest(block=True)
                continue
            if question is None:
                return
            self.flush()
            yield question
