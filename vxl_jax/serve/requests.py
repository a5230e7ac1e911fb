"""What a caller hands the scheduler and what it gets back: the request types and the per-request stream.

A :class:`GenRequest` is a prompt cut at its video (``prefix_ids``, the video, ``suffix_ids``) with its
:class:`RowSampling`; :meth:`Scheduler.submit <vxl_jax.serve.scheduler.Scheduler.submit>` answers with a
:class:`RequestStream` of :class:`Delta` events, readable from any thread (``get``) or from an asyncio loop
(``async for``). The scheduler's model thread pushes; nothing here touches JAX.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
from typing import Callable

import numpy as np


class QueueFull(Exception):
    """``max_queue`` requests are already waiting for a decode row (the HTTP layer answers 429)."""


class SchedulerClosed(RuntimeError):
    """The scheduler is stopping or stopped: it takes no new request (the HTTP layer answers 503)."""


@dataclasses.dataclass(frozen=True)
class VideoRef:
    """What to encode; the app has already resolved and checked the path (media root)."""

    path: str  # an existing local file
    num_frames: int | None = None  # None and fps None: the scheduler's default frame count (as infer.py)
    fps: float | None = None
    ratio: int = 8  # compression ratio (an int from cfg.beacon ratios)


@dataclasses.dataclass(frozen=True)
class RowSampling:
    """One request's sampling settings (temperature 0: greedy)."""

    max_tokens: int
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None  # None: a random seed (sampled rows)
    stop: tuple[str, ...] = ()  # stop strings (the model's eos / im_end ids always stop)


@dataclasses.dataclass(frozen=True)
class GenRequest:
    """One prompt: ``prefix_ids``, then the video (or none), then ``suffix_ids``."""

    id: str
    prefix_ids: np.ndarray  # int32 [P]: the ids before the video placeholder (whole prompt if no video)
    video: VideoRef | None
    suffix_ids: np.ndarray  # int32 [S]: the ids after the video (the conversation's text), [0] if no video
    sampling: RowSampling
    timeout_s: float | None = None


@dataclasses.dataclass(frozen=True)
class Delta:
    """One event of a request's stream."""

    text: str  # new text since the last Delta (stop strings cut off)
    token_ids: tuple[int, ...]
    finish_reason: str | None = None  # None while going; "stop" | "length" | "cancelled" | "timeout" | "error"
    error: str | None = None  # with finish_reason "error" (e.g. an unreadable video): one line
    usage: dict | None = None  # on the last Delta: prompt_tokens (incl. kept video memory slots),
    # completion_tokens, cached_tokens (memory slots taken from the cache)


class RequestStream:
    """The Deltas of one request, in order; the last one has a ``finish_reason``.

    Timings (``time.monotonic`` seconds): ``submitted_at``; ``ttft_s`` (submit to the first token's Delta, None
    before); ``token_times`` (the time each generated token was handed over: the tokens of one decode chunk share
    one); ``per_token_s`` (each token's share of its chunk's interval since the previous hand-over);
    ``finished_at``.
    """

    def __init__(self, request_id: str, on_cancel: Callable[[], None] | None = None):
        self.id = request_id
        self.submitted_at = time.monotonic()
        self.ttft_s: float | None = None
        self.token_times: list[float] = []
        self.per_token_s: list[float] = []
        self.finished_at: float | None = None
        self.cancelled = False
        self._on_cancel = on_cancel
        self._cond = threading.Condition()
        self._items: collections.deque[Delta] = collections.deque()
        self._ended = False  # the final Delta was pushed
        self._done = False  # ... and taken
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    # ------------------------------------------------------------------ the scheduler's side

    def push(self, delta: Delta) -> None:
        """Hand one Delta over (the model thread); records the timings."""
        now = time.monotonic()
        if delta.token_ids:
            last = self.token_times[-1] if self.token_times else self.submitted_at
            if self.ttft_s is None:
                self.ttft_s = now - self.submitted_at
            self.per_token_s += [(now - last) / len(delta.token_ids)] * len(delta.token_ids)
            self.token_times += [now] * len(delta.token_ids)
        with self._cond:
            if self._ended:
                return
            self._items.append(delta)
            if delta.finish_reason is not None:
                self._ended, self.finished_at = True, now
            self._cond.notify_all()
            loop, event = self._loop, self._event
        if loop is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop was closed: nobody is listening any more
                pass

    @property
    def ended(self) -> bool:
        return self._ended

    # ------------------------------------------------------------------ the caller's side

    def cancel(self) -> None:
        """Stop this request: its row is freed at the next decode chunk (a final "cancelled" Delta follows)."""
        self.cancelled = True
        if self._on_cancel is not None:
            self._on_cancel()

    def get(self, timeout: float | None = None) -> Delta:
        """The next Delta, blocking; ``TimeoutError`` after ``timeout`` s, ``EOFError`` after the last one."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._done, timeout):
                raise TimeoutError(f"request {self.id}: no event within {timeout} s")
            return self._take()

    def _take(self) -> Delta:
        if not self._items:
            raise EOFError(f"request {self.id} has finished")
        delta = self._items.popleft()
        self._done = self._ended and not self._items
        return delta

    def __iter__(self):
        while True:
            try:
                delta = self.get()
            except EOFError:
                return
            yield delta
            if delta.finish_reason is not None:
                return

    def __aiter__(self):
        return self

    async def __anext__(self) -> Delta:
        if self._loop is None:
            with self._cond:
                self._loop, self._event = asyncio.get_running_loop(), asyncio.Event()
        while True:
            with self._cond:
                if self._items:
                    return self._take()
                if self._done:
                    raise StopAsyncIteration
                self._event.clear()
            await self._event.wait()

    def result(self, timeout: float | None = None) -> tuple[list[int], str, Delta]:
        """Every Delta until the last (blocking) -> (all token ids, the whole text, the last Delta)."""
        ids, text = [], []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            delta = self.get(None if deadline is None else max(0.0, deadline - time.monotonic()))
            ids += delta.token_ids
            text.append(delta.text)
            if delta.finish_reason is not None:
                return ids, "".join(text), delta
