"""The fallback reader for videos decord cannot open but PyAV can decode (e.g. an mp4 cut short, its index at the
front): decord's ``VideoReader`` interface over the frames PyAV reads, in order."""

from __future__ import annotations

import numpy as np


class _Batch:
    def __init__(self, frames: np.ndarray):
        self.frames = frames

    def asnumpy(self) -> np.ndarray:
        return self.frames


def _decoded(container):
    """Every frame PyAV can decode from the first video stream, in order: packets are decoded until one fails
    (or the data ends), then the decoder is flushed, so the frames it still holds are not lost."""
    import av

    stream = container.streams.video[0]
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            try:
                yield from packet.decode()
            except (av.error.FFmpegError, ValueError):
                break
    except (av.error.FFmpegError, OSError, ValueError):
        pass  # the readable part ends here
    try:
        yield from stream.decode(None)
    except (av.error.FFmpegError, ValueError):
        pass


def readable_frames(path: str) -> tuple[int, float]:
    """-> (how many frames PyAV decodes before the file ends or breaks, less the last one, whose data may be cut
    (the decoder then shows a damaged or repeated picture); the stream's average fps or 0)."""
    import av

    try:
        with av.open(path) as c:
            if not c.streams.video:
                return 0, 0.0
            fps = float(c.streams.video[0].average_rate or 0.0)
            return max(0, sum(1 for _ in _decoded(c)) - 1), fps
    except (av.error.FFmpegError, OSError, ValueError):
        return 0, 0.0


class PyAVReader:
    """``len``, ``get_batch(indices).asnumpy()`` (uint8 [n, H, W, 3]), ``[i]``, ``get_avg_fps()``, ``seek(0)``
    over the first ``total`` frames of ``path``. Frames are decoded forward from the last position, so reading
    in increasing order (as every caller does) decodes the file once; an earlier index reopens it."""

    def __init__(self, path: str, total: int, fps: float):
        self.path, self.total, self.fps = path, int(total), float(fps)
        self._container, self._frames, self._pos, self._last = None, None, 0, None

    def __len__(self) -> int:
        return self.total

    def get_avg_fps(self) -> float:
        return self.fps

    def seek(self, _index: int = 0) -> None:
        self._close()

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames, self._pos, self._last = None, None, 0, None

    def _frame(self, i: int) -> np.ndarray:
        import av

        if not 0 <= i < self.total:
            raise IndexError(f"frame {i} of {self.total}")
        if self._container is None or i < self._pos - 1:
            self._close()
            self._container = av.open(self.path)
            self._frames = _decoded(self._container)
        while self._pos <= i:
            self._last = next(self._frames).to_ndarray(format="rgb24")
            self._pos += 1
        return self._last

    def __getitem__(self, i: int) -> np.ndarray:
        return self._frame(int(i))

    def get_batch(self, indices) -> _Batch:
        return _Batch(np.stack([self._frame(int(i)) for i in indices]))
