"""The whole-model fingerprint: a content hash of every parameter, identifying a model's weights (stored in
memory and session files, checked when they are loaded; the server's cache keys carry it).

The rule (version 1): SHA-256 over the tag ``vxl-jax-fingerprint-v1``, then for every parameter of the NNX tree in
the sorted order of its name (``lm/layers/attn/v/kernel``, ...) the line ``name|shape|dtype`` and its values' bytes
(C order, little-endian) **as stored**: in the converted folder for a loaded model, in memory for a model built in
memory. The fingerprint is the first 32 hex digits.

So a float32 and a bfloat16 load of one converted folder are the same model (both take the folder's
fingerprint; the load dtype is a runtime choice, not new weights), while two folders that differ in any value
of any parameter (one layer's ``v_proj``, a merged LoRA, a later release), or store other dtypes, differ. A model
built in memory and the folder it is saved as (``save_converted``, training's export, same dtype) agree.

Written once when a folder is written (``fingerprint.json``: the converter in both directions, the training
export); for a folder without one it is computed streaming (one parameter block at a time) and cached under
``$XDG_CACHE_HOME/vxl_jax/fingerprints`` (else ``~/.cache/...``), keyed by the folder's path, sizes and mtimes.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Iterable, Iterator

import numpy as np

from vxl_jax.convert import names as N
from vxl_jax.convert import zarr_out
from vxl_jax.convert.layout import FINGERPRINT_NAME, PARAMS_DIR
from vxl_jax.runtime.atomic_io import WriteError, write_text

TAG = b"vxl-jax-fingerprint-v1\n"
DIGITS = 32
BLOCK_BYTES = 64 << 20  # parameters larger than this are hashed in blocks of leading-axis rows


class Fingerprinter:
    """``f.add(name, shape, dtype, blocks)`` for every parameter in sorted name order, then ``f.hexdigest()``."""

    def __init__(self):
        self.h = hashlib.sha256(TAG)
        self.names: list[str] = []

    def add(self, name: str, shape: tuple[int, ...], dtype, blocks: Iterable[np.ndarray]) -> None:
        """``blocks``: the parameter's values as consecutive leading-axis blocks (or the whole array)."""
        if self.names and name <= self.names[-1]:
            raise ValueError(f"parameters must be added in sorted order: {name!r} after {self.names[-1]!r}")
        self.names.append(name)
        dtype = np.dtype(dtype)
        self.h.update(f"{name}|{tuple(int(s) for s in shape)}|{dtype.name}\n".encode())
        n = 0
        for b in blocks:
            b = np.ascontiguousarray(b)
            if b.dtype != dtype:
                raise ValueError(f"{name}: block of dtype {b.dtype}, parameter stored as {dtype}")
            if b.dtype.byteorder == ">":
                b = b.astype(b.dtype.newbyteorder("<"))
            self.h.update(memoryview(b.reshape(-1).view(np.uint8)))
            n += b.size
        if n != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{name}: hashed {n} values of shape {tuple(shape)}")

    def hexdigest(self) -> str:
        return self.h.hexdigest()[:DIGITS]


def param_name(path: tuple) -> str:
    return "/".join(str(k) for k in path)


def _row_blocks(shape: tuple[int, ...], itemsize: int) -> Iterator[slice]:
    rows = shape[0] if shape else 1
    per_row = int(np.prod(shape[1:], dtype=np.int64)) * itemsize if shape else itemsize
    step = max(1, BLOCK_BYTES // max(per_row, 1))
    for a in range(0, rows, step):
        yield slice(a, min(rows, a + step))


def of_arrays(flat: dict[tuple, object]) -> str:
    """Fingerprint of a flat ``{path: array}`` tree (numpy or jax arrays, e.g. a model's pure dict): large
    arrays are copied to the host one block at a time."""
    f = Fingerprinter()
    for name, x in sorted((param_name(p), x) for p, x in flat.items()):
        shape, dtype = tuple(x.shape), np.dtype(x.dtype)
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize <= BLOCK_BYTES or not shape:
            f.add(name, shape, dtype, [np.asarray(x)])
        else:
            f.add(name, shape, dtype, (np.asarray(x[sl]) for sl in _row_blocks(shape, dtype.itemsize)))
    return f.hexdigest()


def of_model(model) -> str:
    """Fingerprint of an in-memory ``VideoXLModel`` (its parameters as they are, in their dtype)."""
    from flax import nnx

    _, state = nnx.split(model)
    return of_arrays(N.flatten(nnx.to_pure_dict(state)))


def of_leaves(leaves: dict[tuple, object], read: Callable) -> str:
    """Streamed fingerprint of stored leaves: ``leaves`` path -> (shape, dtype, handle), ``read(handle, rows)``
    -> numpy block of those leading-axis rows."""
    f = Fingerprinter()
    for name, (shape, dtype, handle) in sorted((param_name(p), v) for p, v in leaves.items()):
        dtype = np.dtype(dtype)
        if not shape:
            f.add(name, shape, dtype, [read(handle, None)])
        else:
            f.add(name, shape, dtype, (read(handle, sl) for sl in _row_blocks(shape, dtype.itemsize)))
    return f.hexdigest()


def of_folder(path, cfg) -> str:
    """Compute a converted folder's fingerprint from its stored parameters (streamed when the converter wrote
    them as zarr leaves; an Orbax tree of another layout is restored once, in its stored dtypes)."""
    root = os.path.join(os.fspath(path), PARAMS_DIR)
    handles = {p: zarr_out.open_leaf(root, p) for p in N.param_shapes(cfg)}
    if all(h is not None for h in handles.values()):
        leaves = {p: (tuple(h.shape), h.dtype.numpy_dtype, h) for p, h in handles.items()}
        return of_leaves(leaves, lambda h, sl: np.asarray((h if sl is None else h[sl]).read().result()))
    import orbax.checkpoint as ocp

    restored = N.flatten(ocp.StandardCheckpointer().restore(os.path.abspath(root)))
    return of_arrays(restored)


def write_record(folder, fingerprint: str, source: str) -> None:
    """Store ``fingerprint`` in ``folder/fingerprint.json`` (``source``: how it was computed)."""
    record = {"fingerprint": fingerprint, "rule": TAG.decode().strip(), "source": source}
    write_text(os.path.join(os.fspath(folder), FINGERPRINT_NAME), json.dumps(record, indent=2) + "\n",
               what="fingerprint")


def read_record(folder) -> str | None:
    """The fingerprint stored in ``folder`` (None if it has none, or one of another rule)."""
    p = os.path.join(os.fspath(folder), FINGERPRINT_NAME)
    try:
        with open(p) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    fp = record.get("fingerprint") if isinstance(record, dict) else None
    return fp if isinstance(fp, str) and record.get("rule") == TAG.decode().strip() else None


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vxl_jax", "fingerprints")


def _cache_key(folder: str) -> str:
    h = hashlib.sha256(os.path.abspath(folder).encode())
    for d, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            st = os.stat(os.path.join(d, name))
            h.update(f"{os.path.relpath(os.path.join(d, name), folder)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:40]


def folder_fingerprint(folder, cfg) -> str:
    """A converted folder's fingerprint: its ``fingerprint.json``, else the cached one, else computed
    (:func:`of_folder`) and cached."""
    folder = os.path.abspath(os.fspath(folder))
    stored = read_record(folder)
    if stored is not None:
        return stored
    cached = os.path.join(cache_dir(), _cache_key(folder) + ".json")
    try:
        with open(cached) as f:
            return json.load(f)["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    fp = of_folder(folder, cfg)
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        write_text(cached, json.dumps({"fingerprint": fp, "folder": folder}) + "\n", what="fingerprint cache")
    except (OSError, WriteError):
        pass  # a cache: computing again next time is the only cost
    return fp
