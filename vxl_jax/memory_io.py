"""Save / load a compressed video memory (``KVMemory``, batch 1) as safetensors + JSON metadata.

Only the valid slots are stored. The metadata names the model geometry, so loading a memory into a
model of another shape is a clear error instead of garbage.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from vxl_jax.config import VideoXLConfig
from vxl_jax.memory import KVMemory

FORMAT = "vxl-jax-memory-v1"


def _geometry(cfg: VideoXLConfig) -> dict:
    lm = cfg.lm
    return {"num_layers": lm.num_layers, "num_kv_heads": lm.num_kv_heads, "head_dim": lm.head_dim,
            "hidden_size": lm.hidden_size, "vocab_size": lm.vocab_size, "rope_theta": lm.rope_theta}


def save_memory(path, mem: KVMemory, cfg: VideoXLConfig, extra: dict | None = None) -> None:
    """``extra``: JSON-able facts stored beside the K/V (e.g. prompt ids, frame count)."""
    if mem.k.shape[1] != 1:
        raise ValueError(f"save_memory stores one prompt's memory (batch 1), got batch {mem.k.shape[1]}")
    n = int(np.asarray(mem.length)[0])
    k = np.asarray(mem.k[:, 0, :n].astype(jnp.float32))
    v = np.asarray(mem.v[:, 0, :n].astype(jnp.float32))
    meta = {"format": FORMAT, "geometry": _geometry(cfg), "dtype": str(mem.k.dtype),
            "sizes": mem.host_sizes(), "extra": extra or {}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({"k": k, "v": v}, str(path), metadata={"vxl": json.dumps(meta)})


def load_memory(path, cfg: VideoXLConfig, dtype=jnp.float32) -> tuple[KVMemory, dict]:
    """-> (memory, the ``extra`` dict it was saved with)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"memory file not found: {path}")
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            meta = json.loads((f.metadata() or {}).get("vxl", "{}"))
        arrays = load_file(str(path))
    except Exception as e:
        raise ValueError(f"{path} is not a readable vxl-jax memory file: {e}") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vxl-jax memory file (format {meta.get('format')!r})")
    if meta["geometry"] != _geometry(cfg):
        raise ValueError(f"memory {path} was made by a model with geometry {meta['geometry']}, "
                         f"this model has {_geometry(cfg)}")
    s = meta["sizes"]
    as_i32 = lambda x: jnp.array([x], jnp.int32)  # noqa: E731
    mem = KVMemory(jnp.asarray(arrays["k"], dtype)[:, None], jnp.asarray(arrays["v"], dtype)[:, None],
                   as_i32(s["total"]), as_i32(s["prefix"]), as_i32(s["beacons"]), as_i32(s["text"]))
    return mem, meta.get("extra", {})
