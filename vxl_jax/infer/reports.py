"""Per-call reports of the inference facade: wall time, compile / run time of the engine, peak memory, and the
token progress bar of a decoding call. Reports are read-only mappings, built once per call."""

from __future__ import annotations

import resource
import time
from types import MappingProxyType
from typing import Any, Mapping

import jax
import numpy as np
from tqdm.auto import tqdm

from vxl_jax.beacon.memory import KVMemory
from vxl_jax.infer.core import Row


class Clock:
    """One call's wall time and the engine's compile / run time since it started -> read-only reports."""

    def __init__(self, engine):
        self.engine, self.t0 = engine, time.perf_counter()
        self.c0, self.r0 = engine.compile_s, engine.run_s

    def _times(self, compile_key="compile_s", run_key="run_s") -> dict:
        return {compile_key: self.engine.compile_s - self.c0, run_key: self.engine.run_s - self.r0,
                "peak_mem_bytes": peak_memory_bytes()}

    def report(self, row: Row, mem: KVMemory) -> Mapping[str, Any]:
        """The prompt stage of one row: frames, visual tokens, kept KV, times."""
        if row.memory is not None:
            frames, visual = row.memory.frames, row.memory.visual_tokens
        elif row.video is not None:
            frames, visual = row.video.frames, row.video.num_visual(self.engine.cfg.beacon)
        else:
            frames, visual = 0, 0
        sizes = mem.host_sizes()
        return MappingProxyType({"frames": frames, "visual_tokens": visual, "kept_kv": sizes["total"],
                                 "memory_sizes": sizes, **self._times(),
                                 "wall_s": time.perf_counter() - self.t0})

    def batch_report(self, batch: int) -> Mapping[str, Any]:
        return MappingProxyType({"batch": batch, **self._times(), "wall_s": time.perf_counter() - self.t0})

    def decode_report(self, ids, mem: KVMemory, single: bool) -> Mapping[str, Any]:
        kept = [int(x) for x in np.asarray(mem.length)]
        return MappingProxyType({"generated": len(ids[0]) if single else [len(i) for i in ids],
                                 "kept_kv": kept[0] if single else kept,
                                 **self._times("decode_compile_s", "decode_run_s")})


class TokenProgress:
    """A token progress bar (off when a stream shows the answer itself) chained before a chunk callback."""

    def __init__(self, total: int, show: bool):
        self.bar = tqdm(total=total, desc="generate", unit="tok", disable=not show, leave=False)

    def chained(self, then):
        def on_chunk(new):
            self.bar.update(len(new[0]))
            if then is not None:
                then(new)
        return on_chunk

    def close(self):
        self.bar.close()


def peak_memory_bytes() -> int:
    """Accelerator peak bytes in use when the backend reports it, else the process's peak RSS."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"])
    except Exception:  # pragma: no cover - backend without memory stats
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
