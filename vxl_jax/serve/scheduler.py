"""The scheduler: continuous batching of video questions over a fixed number of decode rows.

One model thread does all JAX work, in a loop; each turn:

1. new requests: a video request's file is hashed on a helper thread (:func:`~vxl_jax.serve.cache.file_digest`),
   then it takes its video's memory from the cache (:class:`~vxl_jax.serve.cache.VideoCache`), joins the
   encoding of the same video already under way (a video is encoded once however many ask at once), or starts
   one (:class:`~vxl_jax.serve.encode.EncodeJob`, frames decoded on a reader thread);
2. requests whose memory is ready are prompted together (their texts over their memories: one
   ``InferenceCore.prompt`` call, as ``VideoXL.generate(..., memory=...)``) and written into free decode rows (:class:`~vxl_jax.serve.rows.DecodeRows`);
3. at most one encoding step (one window-scan call), so a long new video never stalls the streams already
   decoding for more than that;
4. one decode chunk over every active row (each row its own memory length and sampling settings); new text is
   detokenized and handed to each request's :class:`~vxl_jax.serve.requests.RequestStream`. Finished, stopped
   (eos / stop strings), cancelled and timed-out rows free their slot at once.

A greedy request gets exactly the ids of ``vx.generate(prefix + [-200] + suffix, frames, ratio, max_tokens)``
(frames sampled as ``infer.py`` does), whatever else is in the batch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import secrets
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from vxl_jax.beacon.ratios import check_ratio
from vxl_jax.infer.core import DECODE_CHUNK, TEXT_BUCKET, Row, capacity
from vxl_jax.infer.results import VideoMemory
from vxl_jax.infer.sampling import SamplingParams, seen_mask
from vxl_jax.serve.cache import VideoCache, file_digest, video_key
from vxl_jax.serve.detok import TextStream
from vxl_jax.serve.encode import EncodeJob, one_line
from vxl_jax.serve.requests import (Delta, GenRequest, QueueFull, RequestStream, RowSampling, SchedulerClosed,
                                    VideoRef)
from vxl_jax.serve.rows import DecodeRows, Occupant, cap_bucket

log = logging.getLogger(__name__)
DEFAULT_FRAMES = 128  # frames per video when a VideoRef gives neither num_frames nor fps (infer.py's default)
MAX_TOKENS_LIMIT = 4096  # the largest max_tokens a request may ask for
IDLE_WAIT_S = 0.5  # the model thread's longest sleep when there is nothing to do


@dataclasses.dataclass(eq=False)
class _Item:
    """One request inside the scheduler."""

    req: GenRequest
    stream: RequestStream
    params: SamplingParams
    seed: int
    text: TextStream
    deadline: float | None
    phase: str = "new"  # new -> hashing -> encoding -> ready -> active -> done
    memory: VideoMemory | None = None
    cached: int = 0  # memory slots taken from the cache (or from another request's encoding)
    prompt_tokens: int = 0


def sampling_params(s: RowSampling) -> SamplingParams:
    """A request's settings as the decode loop's (temperature 0: greedy; ``ValueError`` when out of range)."""
    if s.temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {s.temperature}")
    if s.temperature == 0:
        return SamplingParams(repetition_penalty=float(s.repetition_penalty))
    return SamplingParams(do_sample=True, temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p),
                          repetition_penalty=float(s.repetition_penalty))


class Scheduler:
    """Continuous batching over ``max_rows`` decode rows of ``vx`` (a ``VideoXL``); at most ``max_queue`` requests
    wait for a row. ``cache``: the encoded-video cache (default: 1 GiB in memory, no spill folder);
    ``default_frames``: frames sampled from a video whose request names neither a count nor a rate; ``chunk``:
    tokens per decode chunk (the streaming and row-insertion granularity)."""

    def __init__(self, vx, *, max_rows: int = 8, max_queue: int = 64, cache: VideoCache | None = None,
                 default_frames: int = DEFAULT_FRAMES, chunk: int = DECODE_CHUNK):
        if max_rows < 1 or max_queue < 1 or default_frames < 1 or chunk < 1:
            raise ValueError("max_rows, max_queue, default_frames and chunk must be >= 1")
        self.vx, self.core = vx, vx.core
        self.max_rows, self.max_queue, self.default_frames = int(max_rows), int(max_queue), int(default_frames)
        self.fingerprint = vx.fingerprint()  # before the model thread starts: it reads the weights
        self.cache = cache if cache is not None else VideoCache()
        self.cache.bind(vx.cfg, self.core.dtype, self.fingerprint)
        self.rows = DecodeRows(self.core, self.max_rows, vx.stop_ids(), chunk)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._inbox: collections.deque[_Item] = collections.deque()
        self._prepped: collections.deque = collections.deque()  # (item, digest or exception) from the hash threads
        self._ready: list[_Item] = []
        self._live: dict[int, _Item] = {}  # id(item) -> item, every item not finished
        self._jobs: dict[str, EncodeJob] = {}
        self._waiting = 0  # submitted, not yet in a row nor finished
        self._closing = False
        self._grace_until = 0.0
        self._thread: threading.Thread | None = None
        self._hasher = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="vxl-hash")
        self.counts = collections.Counter()  # requests, tokens_generated, encodes, encodes_shared, errors, ...

    # ------------------------------------------------------------------ the callers' side (any thread)

    def start(self) -> None:
        """Start the model thread (all JAX work runs on it)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vxl-model", daemon=True)
            self._thread.start()

    def submit(self, req: GenRequest) -> RequestStream:
        """Queue ``req`` -> its stream. ``QueueFull`` when ``max_queue`` requests wait, ``SchedulerClosed`` once
        stopping, ``ValueError`` (one line) for a request that cannot be served (bad sampling or ratio, no text)."""
        item = self._item(req)
        with self._lock:
            if self._closing:
                raise SchedulerClosed("the server is shutting down")
            if self._waiting >= self.max_queue:
                raise QueueFull(f"{self._waiting} requests are waiting (max_queue {self.max_queue})")
            self._waiting += 1
            self._inbox.append(item)
            self.counts["requests"] += 1
        self._wake.set()
        return item.stream

    def _item(self, req: GenRequest) -> _Item:
        s = req.sampling
        if not 1 <= int(s.max_tokens) <= MAX_TOKENS_LIMIT:
            raise ValueError(f"max_tokens must be in [1, {MAX_TOKENS_LIMIT}], got {s.max_tokens}")
        params = sampling_params(s)
        prefix, suffix = np.asarray(req.prefix_ids), np.asarray(req.suffix_ids)
        for name, ids in (("prefix_ids", prefix), ("suffix_ids", suffix)):
            if ids.ndim != 1 or (len(ids) and (ids.min() < 0 or ids.max() >= self.vx.cfg.lm.vocab_size)):
                raise ValueError(f"{name} must be 1-D token ids in [0, {self.vx.cfg.lm.vocab_size})")
        if req.video is not None:
            check_ratio(self.vx.cfg.beacon, int(req.video.ratio))
            if req.video.fps is not None and req.video.num_frames is not None:
                raise ValueError("give num_frames or fps for a video, not both")
            if (req.video.fps is not None and req.video.fps <= 0) or (req.video.num_frames or 1) < 1:
                raise ValueError("num_frames and fps must be positive")
            if not len(suffix):
                raise ValueError("the prompt has no text after the video")
        elif not len(prefix):
            raise ValueError("the prompt is empty")
        if req.timeout_s is not None and req.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {req.timeout_s}")
        stream = RequestStream(req.id, on_cancel=self._wake.set)
        deadline = None if req.timeout_s is None else stream.submitted_at + float(req.timeout_s)
        seed = int(s.seed) if s.seed is not None else secrets.randbits(31)
        return _Item(req, stream, params, seed, TextStream(self.vx.tokenizer, s.stop), deadline)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking requests; in-flight ones go on for up to ``grace_s`` seconds, then are cancelled; the cache
        is flushed to its spill folder; the model thread ends."""
        with self._lock:
            self._closing = True
            self._grace_until = time.monotonic() + max(0.0, float(grace_s))
        self._wake.set()
        if self._thread is not None:
            self._thread.join(grace_s + 60.0)
        else:
            self.cache.flush()
        self._hasher.shutdown(wait=False, cancel_futures=True)

    def snapshot(self) -> dict:
        """Gauges and counters: queue_depth, active_rows, max_rows, the cache's entries / bytes / hits / misses,
        tokens_generated, requests, encodes (videos encoded), encodes_shared (requests that joined one)."""
        with self._lock:
            out = {"queue_depth": self._waiting, "active_rows": self.rows.active, "max_rows": self.max_rows,
                   "decode_rows": len(self.rows.rows), "decode_capacity": self.rows.capacity,
                   "encoding": len(self._jobs)}
            out.update({k: self.counts[k] for k in ("requests", "tokens_generated", "encodes", "encodes_shared",
                                                     "errors", "cancelled", "timeouts")})
        out.update(self.cache.stats())
        return out

    # ------------------------------------------------------------------ the model thread

    def _run(self) -> None:
        try:
            while self._turn():
                pass
        except Exception:  # pragma: no cover - a bug: fail every request rather than hang them
            log.exception("scheduler: the model thread failed")
            for item in list(self._live.values()):
                self._finish(item, "error", error="internal error in the scheduler")
        finally:
            try:
                self.cache.flush()
            except Exception:  # pragma: no cover
                log.exception("scheduler: flushing the video cache failed")

    def _turn(self) -> bool:
        """One turn of the loop (see the module docstring) -> False when the scheduler has stopped."""
        self._wake.clear()
        self._take_new()
        self._expire()
        if self._closing and (not self._live or time.monotonic() >= self._grace_until):
            for item in list(self._live.values()):
                self._finish(item, "cancelled", error=None)
            return False
        worked = self._admit()
        worked = self._encode_step() or worked
        worked = self._decode_step() or worked
        if not worked:
            self._wake.wait(self._idle_s())
        return True

    def _idle_s(self) -> float:
        now, until = time.monotonic(), [IDLE_WAIT_S]
        until += [i.deadline - now for i in self._live.values() if i.deadline is not None]
        if self._closing:
            until.append(self._grace_until - now)
        return max(0.0, min(until))

    def _take_new(self) -> None:
        with self._lock:
            new, self._inbox = list(self._inbox), collections.deque()
        for item in new:
            self._live[id(item)] = item
            if item.req.video is None:
                item.phase = "ready"
                self._ready.append(item)
            else:
                item.phase = "hashing"
                fut = self._hasher.submit(file_digest, item.req.video.path)
                fut.add_done_callback(lambda f, item=item: self._hashed(item, f))
        while self._prepped:
            item, digest = self._prepped.popleft()
            if item.phase == "hashing":
                self._place(item, digest)

    def _hashed(self, item: _Item, fut) -> None:
        """(a hash thread) the file's digest, or the error reading it."""
        try:
            self._prepped.append((item, fut.result()))
        except BaseException as e:  # noqa: BLE001 - handed to the model thread as the request's error
            self._prepped.append((item, e))
        self._wake.set()

    def _frames(self, video: VideoRef) -> int | None:
        """The frame count to sample (None: ``video.fps`` frames per second)."""
        if video.fps is not None:
            return None
        return int(video.num_frames) if video.num_frames is not None else self.default_frames

    def _place(self, item: _Item, digest) -> None:
        """A hashed video request: the cached memory, a share of the encoding under way, or a new encoding."""
        if isinstance(digest, BaseException):
            self._finish(item, "error", error=f"cannot read video {item.req.video.path}: {one_line(digest)}")
            return
        v = item.req.video
        frames = self._frames(v)
        key = video_key(digest, frames, v.fps, v.ratio, item.req.prefix_ids, self.fingerprint)
        job = self._jobs.get(key)
        if job is not None:
            job.waiters.append(item)
            item.phase = "encoding"
            self.counts["encodes_shared"] += 1
            return
        vm = self.cache.get(key)
        if vm is not None:
            self._memory_ready(item, vm, cached=True)
            return
        self._jobs[key] = job = EncodeJob(self.core, key, v, item.req.prefix_ids, frames, self._wake.set)
        job.waiters.append(item)
        item.phase = "encoding"
        self.counts["encodes"] += 1

    def _memory_ready(self, item: _Item, vm: VideoMemory, cached: bool) -> None:
        item.memory, item.phase = vm, "ready"
        item.cached = int(np.asarray(vm.kv.length)[0]) if cached else 0
        self._ready.append(item)

    def _encode_step(self) -> bool:
        """At most one encoding step (one model call) for the oldest encoding that can make progress."""
        job = next((j for j in self._jobs.values() if j.can_step), None)
        if job is None:
            return False
        job.step()
        if job.finished:
            del self._jobs[job.key]
            if job.error is not None:
                for item in job.waiters:
                    self._finish(item, "error", error=job.error)
            else:
                self.cache.put(job.key, job.result)
                for i, item in enumerate(job.waiters):
                    self._memory_ready(item, job.result, cached=i > 0)
        return True

    def _admit(self) -> bool:
        """Prompt the ready requests that fit in the free rows, together (one text call) -> whether any were."""
        n = min(len(self._ready), self.rows.free)
        if not n:
            return False
        batch, self._ready = self._ready[:n], self._ready[n:]
        try:
            self._prompt(batch)
        except Exception as e:  # these requests fail; the others go on
            log.exception("scheduler: requests %s could not be prompted", [i.req.id for i in batch])
            for item in batch:
                self._finish(item, "error", error=one_line(e))
        return True

    def _prompt(self, batch: list[_Item]) -> None:
        """Each request's text over its memory (or its whole prompt) in one ``InferenceCore.prompt`` call, as
        ``VideoXL.generate(..., memory=...)`` does; rows padded to a row bucket (copies of the first) and memories
        sized to the rows' capacity buckets (few programs), then written into free decode rows."""
        rows = [Row(np.asarray(i.req.prefix_ids, np.int32)) if i.memory is None
                else Row.over_memory(i.memory, np.asarray(i.req.suffix_ids, np.int32)) for i in batch]
        slots = [len(r.text) + (0 if r.memory is None else int(np.asarray(r.memory.kv.length)[0])) for r in rows]
        needs = [cap_bucket(capacity(n + int(i.req.sampling.max_tokens))) for n, i in zip(slots, batch)]
        size = next(s for s in self.rows.sizes if s >= len(rows))
        p = self.core.prompt(rows + [rows[0]] * (size - len(rows)), room=max(needs) - max(slots) - TEXT_BUCKET)
        last = p.logits[jnp.arange(size), jnp.asarray(p.n - 1)]  # [size, V] on the device
        lengths = np.asarray(p.memory.length)
        for b, (item, row) in enumerate(zip(batch, rows)):
            item.prompt_tokens, item.memory = int(lengths[b]), None  # the row has its own copy
            occ = Occupant(item, item.params, int(item.req.sampling.max_tokens), need=needs[b])
            self.rows.insert(occ, p.memory, b, last[b], seen_mask(row.seen, self.rows.vocab),
                             jax.random.PRNGKey(item.seed))
            item.phase = "active"
            with self._lock:
                self._waiting -= 1

    def _decode_step(self) -> bool:
        """One decode chunk; hand out each row's new text; free the rows that finished."""
        if not self.rows.active:
            return False
        try:
            results = self.rows.step()
        except Exception as e:  # the batch is lost: its requests fail, the scheduler goes on
            log.exception("scheduler: a decode chunk failed")
            for occ in [r for r in self.rows.rows if r is not None]:
                self._finish(occ.item, "error", error=f"decoding failed: {one_line(e)}")
            self.rows = DecodeRows(self.core, self.max_rows, self.rows.stop_ids, self.rows.chunk)
            return True
        for occ, ids, done in [(self.rows.rows[b], ids, done) for b, ids, done in results]:
            self._deliver(occ.item, ids, done)  # by occupant: a finished row may regather the others
        return True

    def _deliver(self, item: _Item, ids: np.ndarray, done: bool) -> None:
        text, kept, stopped = item.text.add(ids)
        self.counts["tokens_generated"] += len(kept)
        if stopped or done:
            if not stopped:
                text += item.text.finish()
            reason = "stop" if stopped or (len(kept) and int(kept[-1]) in self.rows.stop_ids) else "length"
            self._finish(item, reason, text, kept)
        elif text or kept:
            item.stream.push(Delta(text, tuple(int(i) for i in kept)))

    def _expire(self) -> None:
        """Cancelled and timed-out requests finish now (an active one frees its row)."""
        now = time.monotonic()
        for item in list(self._live.values()):
            if item.stream.cancelled:
                self._finish(item, "cancelled")
            elif item.deadline is not None and now >= item.deadline:
                self._finish(item, "timeout", error=f"the request took longer than {item.req.timeout_s:g} s")

    def _finish(self, item: _Item, reason: str, text: str = "", ids=(), error: str | None = None) -> None:
        """The request's last Delta; its row, queue place or share of an encoding is given up."""
        if item.phase == "done":
            return
        phase, item.phase = item.phase, "done"
        self._live.pop(id(item), None)
        if phase == "active":
            occ = next(r for r in self.rows.rows if r is not None and r.item is item)
            self.rows.release(self.rows.rows.index(occ))
        else:
            with self._lock:
                self._waiting -= 1
            if item in self._ready:
                self._ready.remove(item)
            self._leave_jobs(item)
        self.counts[{"error": "errors", "cancelled": "cancelled", "timeout": "timeouts"}.get(reason, "done")] += 1
        usage = {"prompt_tokens": item.prompt_tokens, "completion_tokens": len(item.text.ids),
                 "cached_tokens": item.cached if item.prompt_tokens else 0}
        item.stream.push(Delta(text, tuple(int(i) for i in ids), reason, error if reason == "error" else None, usage))

    def _leave_jobs(self, item: _Item) -> None:
        for key, job in list(self._jobs.items()):
            if item in job.waiters:
                job.waiters.remove(item)
                if not job.waiters:  # nobody waits for this video any more
                    job.abort()
                    del self._jobs[key]


__all__ = ["DEFAULT_FRAMES", "Delta", "GenRequest", "QueueFull", "RequestStream", "RowSampling", "Scheduler",
           "SchedulerClosed", "VideoRef"]
