"""Streaming safetensors writer: header first (shapes known up front), then tensors one by one."""

from __future__ import annotations

import json
import struct

import numpy as np

from vxl_jax.convert.readers import ST_NAMES


class SafetensorsWriter:
    """``w = SafetensorsWriter(path, [(name, shape, dtype), ...]); w.write(name, array)`` in that order."""

    def __init__(self, path: str, specs: list[tuple[str, tuple[int, ...], np.dtype]], metadata: dict | None = None):
        header, off = {}, 0
        self.order = []
        for name, shape, dt in specs:
            dt = np.dtype(dt)
            n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            header[name] = {"dtype": ST_NAMES[dt], "shape": list(shape), "data_offsets": [off, off + n]}
            self.order.append((name, tuple(shape), dt))
            off += n
        if metadata:
            header["__metadata__"] = metadata
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(raw)) + raw)
        self.i = 0
        self.nbytes = off

    def write(self, name: str, a: np.ndarray) -> None:
        exp_name, shape, dt = self.order[self.i]
        assert name == exp_name and tuple(a.shape) == shape, (name, exp_name, a.shape, shape)
        np.ascontiguousarray(a, dtype=dt).tofile(self.f)
        self.i += 1

    def write_parts(self, name: str, parts) -> None:
        """Write tensor ``name`` from consecutive row blocks (C order), without holding it whole."""
        exp_name, shape, dt = self.order[self.i]
        assert name == exp_name, (name, exp_name)
        n = 0
        for a in parts:
            np.ascontiguousarray(a, dtype=dt).tofile(self.f)
            n += a.size
        assert n == int(np.prod(shape, dtype=np.int64)), (name, n, shape)
        self.i += 1

    def close(self) -> None:
        assert self.i == len(self.order), f"wrote {self.i} of {len(self.order)} tensors"
        self.f.close()
