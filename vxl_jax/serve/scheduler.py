"""The scheduler: continuous batching of video questions over a fixed number of decode rows (work in progress:
the interface below is the contract the HTTP layer codes against)."""

from __future__ import annotations

from vxl_jax.serve.requests import (Delta, GenRequest, QueueFull, RequestStream, RowSampling, SchedulerClosed,
                                    VideoRef)

DEFAULT_FRAMES = 128  # frames per video when a VideoRef gives neither num_frames nor fps (infer.py's default)


class Scheduler:
    """``Scheduler(vx, max_rows=8, max_queue=64, cache=None)``; ``start()``, ``submit(req) -> RequestStream``
    (thread-safe; ``QueueFull`` when ``max_queue`` wait; ``SchedulerClosed`` once stopping; ``ValueError`` for a
    bad request), ``stop(grace_s)``, ``snapshot() -> dict``."""

    def __init__(self, vx, *, max_rows: int = 8, max_queue: int = 64, cache=None, default_frames: int = DEFAULT_FRAMES):
        raise NotImplementedError("the scheduler is being written")


__all__ = ["Delta", "GenRequest", "QueueFull", "RequestStream", "RowSampling", "Scheduler", "SchedulerClosed",
           "VideoRef", "DEFAULT_FRAMES"]
