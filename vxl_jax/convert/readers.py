"""Lazy readers of PyTorch checkpoints: one tensor (or a block of rows) at a time.

Formats: ``model.safetensors``, sharded safetensors (``model.safetensors.index.json``),
``pytorch_model.bin`` and sharded ``.bin`` (``pytorch_model.bin.index.json``). Opening a
checkpoint reads only headers (safetensors) or memory-maps the pickles (``torch.load(mmap=True)``),
and checks that every file named by an index exists and holds the tensors it should, and that no
safetensors file is truncated.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct

import ml_dtypes
import numpy as np

from vxl_jax.convert.errors import ConversionError

ST_DTYPES = {
    "F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype(np.float64), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
FLOAT_DTYPES = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}


@dataclasses.dataclass
class TensorInfo:
    name: str  # as stored in the file
    file: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int = 0  # safetensors: absolute byte offset of the data


class SafetensorsFile:
    """Header of one safetensors file; reads tensors (or row blocks) with plain file reads."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConversionError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                raise ConversionError(f"{path}: truncated safetensors file (header says {n} bytes, file has {size})")
            try:
                header = json.loads(f.read(n))
            except ValueError as e:
                raise ConversionError(f"{path}: corrupt safetensors header ({e})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.tensors: dict[str, TensorInfo] = {}
        end = 0
        for name, h in header.items():
            if h["dtype"] not in ST_DTYPES:
                raise ConversionError(f"{path}: tensor {name!r} has unsupported dtype {h['dtype']}")
            dt, shape = ST_DTYPES[h["dtype"]], tuple(h["shape"])
            b, e = h["data_offsets"]
            if e - b != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
                raise ConversionError(f"{path}: tensor {name!r} has inconsistent data offsets")
            end = max(end, e)
            self.tensors[name] = TensorInfo(name, path, dt, shape, 8 + n + b)
        if 8 + n + end > size:
            raise ConversionError(
                f"{path}: truncated safetensors file ({size} bytes, the header needs {8 + n + end})")

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Tensor ``name`` (or rows ``rows`` of its first axis) as a fresh numpy array."""
        info = self.tensors[name]
        shape = info.shape
        start, stop = 0, (shape[0] if shape else 1)
        if rows is not None:
            start, stop, _ = rows.indices(shape[0])
        row = int(np.prod(shape[1:], dtype=np.int64)) if shape else 1
        count = (stop - start) * row
        with open(self.path, "rb") as f:
            f.seek(info.offset + start * row * info.dtype.itemsize)
            a = np.fromfile(f, dtype=info.dtype, count=count)
        if a.size != count:
            raise ConversionError(f"{self.path}: tensor {name!r} is truncated")
        return a.reshape(((stop - start),) + shape[1:] if shape else ())


class TorchBinFile:
    """One ``pytorch_model*.bin`` opened with ``torch.load(mmap=True, weights_only=True)``."""

    def __init__(self, path: str):
        import torch

        self.path = path
        try:
            self.sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to unpickle is a bad input
            raise ConversionError(f"{path}: cannot be read by torch.load ({type(e).__name__}: {e})") from None
        if not isinstance(self.sd, dict):
            raise ConversionError(f"{path}: expected a state dict, got {type(self.sd).__name__}")
        self.tensors = {}
        for name, t in self.sd.items():
            if not isinstance(t, torch.Tensor):
                raise ConversionError(f"{path}: entry {name!r} is not a tensor")
            self.tensors[name] = TensorInfo(name, path, _np_dtype(t.dtype, path, name), tuple(t.shape))

    def close(self) -> None:
        """Drop the memory map (its touched pages count as resident memory until then)."""
        self.sd = None

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        import torch

        if self.sd is None:
            raise RuntimeError(f"{self.path} was closed")
        t = self.sd[name]
        if rows is not None:
            t = t[rows]
        if t.dtype == torch.bfloat16:
            out = t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
        else:
            out = t.contiguous().numpy().copy()
        _drop_pages(t.data_ptr(), t.numel() * t.element_size())
        return out


def _drop_pages(addr: int, nbytes: int) -> None:
    """madvise(MADV_DONTNEED) a read-only file mapping: the pages leave our RSS (re-read on access)."""
    global _LIBC
    if nbytes <= 0 or os.name != "posix":
        return
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = os.sysconf("SC_PAGE_SIZE")
    start = addr - addr % page
    _LIBC.madvise(start, addr + nbytes - start, 4)  # MADV_DONTNEED; failure is harmless (memory stays)


_LIBC = None


def _np_dtype(tdt, path, name) -> np.dtype:
    import torch

    table = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16,
             torch.float64: np.float64, torch.int64: np.int64, torch.int32: np.int32, torch.uint8: np.uint8,
             torch.bool: np.bool_}
    if tdt not in table:
        raise ConversionError(f"{path}: tensor {name!r} has unsupported dtype {tdt}")
    return np.dtype(table[tdt])


class Checkpoint:
    """All tensors of a PyTorch checkpoint folder: ``infos`` name -> TensorInfo; ``read(name, rows)``."""

    def __init__(self, folder: str):
        if not os.path.isdir(folder):
            raise ConversionError(f"source folder not found: {folder}")
        self.folder = folder
        self.files: dict[str, SafetensorsFile | TorchBinFile] = {}
        self.infos: dict[str, TensorInfo] = {}
        names = os.listdir(folder)
        st_index = os.path.join(folder, "model.safetensors.index.json")
        bin_index = os.path.join(folder, "pytorch_model.bin.index.json")
        if os.path.isfile(st_index):
            self.format = "safetensors (sharded)"
            self._from_index(st_index, SafetensorsFile)
        elif os.path.isfile(os.path.join(folder, "model.safetensors")):
            self.format = "safetensors"
            self._add(SafetensorsFile(os.path.join(folder, "model.safetensors")))
        elif os.path.isfile(bin_index):
            self.format = "pytorch .bin (sharded)"
            self._from_index(bin_index, TorchBinFile)
        elif os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
            self.format = "pytorch .bin"
            self._add(TorchBinFile(os.path.join(folder, "pytorch_model.bin")))
        else:
            raise ConversionError(
                f"{folder}: no weights found (expected model.safetensors, model.safetensors.index.json, "
                f"pytorch_model.bin or pytorch_model.bin.index.json); files: {sorted(names)[:20]}")

    def _from_index(self, index_path: str, cls):
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        except (ValueError, KeyError) as e:
            raise ConversionError(f"{index_path}: not a valid index ({e})") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(self.folder, s))]
        if missing:
            raise ConversionError(f"{index_path}: shard file(s) named in the index are missing: {missing}")
        for s in shards:
            self._add(cls(os.path.join(self.folder, s)))
        problems = [f"{n} (index: {s})" for n, s in weight_map.items()
                    if n not in self.infos or os.path.basename(self.infos[n].file) != s]
        if problems:
            raise ConversionError(f"{index_path}: tensors listed in the index are not in their shard: {problems}")

    def _add(self, f):
        self.files[f.path] = f
        for name, info in f.tensors.items():
            if name in self.infos:
                raise ConversionError(f"tensor {name!r} appears in both {self.infos[name].file} and {f.path}")
            self.infos[name] = info

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(i.shape, dtype=np.int64)) * i.dtype.itemsize for i in self.infos.values())

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        info = self.infos[name]
        return self.files[info.file].read(name, rows)

    def release(self, path: str) -> None:
        """Done with file ``path`` (unmaps a .bin file; a no-op for safetensors)."""
        close = getattr(self.files[path], "close", None)
        if close is not None:
            close()

    def order(self) -> list[str]:
        """Tensor names in on-disk order (file by file, by offset) for sequential reads."""
        return sorted(self.infos, key=lambda n: (self.infos[n].file, self.infos[n].offset))
