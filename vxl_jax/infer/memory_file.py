"""Save / load a compressed video memory (``KVMemory``, batch 1) as safetensors + JSON metadata.

Only the valid slots are stored. The metadata names the model geometry and the fingerprint of the model's weights
(:mod:`vxl_jax.convert.fingerprint`: every parameter), so loading a memory into a model of another shape, or into
another model of the same shape, is a clear error instead of garbage.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from vxl_jax.config import VideoXLConfig
from vxl_jax.beacon.memory import KVMemory
from vxl_jax.infer.results import VideoMemory
from vxl_jax.runtime.atomic_io import atomic_path, check_target

FORMAT = "vxl-jax-memory-v1"


def geometry(cfg: VideoXLConfig) -> dict:
    lm = cfg.lm
    return {"num_layers": lm.num_layers, "num_kv_heads": lm.num_kv_heads, "head_dim": lm.head_dim,
            "hidden_size": lm.hidden_size, "vocab_size": lm.vocab_size, "rope_theta": lm.rope_theta}


class MemoryMismatchError(ValueError):
    """A memory file made by another model (other geometry or other weights)."""


OLD_FINGERPRINT_DIGITS = 16  # files saved before the whole-model fingerprint (a hash of a few rows only)


def mismatch_message(path, saved: str, fingerprint: str) -> str:
    """One line naming both fingerprints."""
    old = (" (saved by an older vxl-jax, whose fingerprint covered only a few parameter rows)"
           if len(saved) == OLD_FINGERPRINT_DIGITS else "")
    return (f"memory {path} was made by another model (fingerprint {saved}, this model's is {fingerprint}){old}; "
            f"encode the video again with this model (--save-memory)")


def save_memory(path, mem: KVMemory, cfg: VideoXLConfig, extra: dict | None = None,
                fingerprint: str | None = None, *, tensors: dict | None = None, meta: dict | None = None) -> None:
    """``extra``: JSON-able facts stored beside the K/V (e.g. prompt ids, frame count); ``fingerprint``: the
    producing model's fingerprint (``VideoXL.fingerprint()``, checked by :func:`load_memory`); ``tensors`` /
    ``meta``: more arrays and metadata keys stored in the same file (a session's pending frames and state).

    Atomic (:mod:`vxl_jax.runtime.atomic_io`): the target is checked first (its folder must exist and be writable,
    it must not be a folder), a failed write (full disk, file-size limit) leaves the previous file or nothing and
    raises ``WriteError`` (one line)."""
    check_target(path, "memory file")
    if mem.k.shape[1] != 1:
        raise ValueError(f"save_memory stores one prompt's memory (batch 1), got batch {mem.k.shape[1]}")
    n = int(np.asarray(mem.length)[0])
    k = np.asarray(mem.k[:, 0, :n].astype(jnp.float32))
    v = np.asarray(mem.v[:, 0, :n].astype(jnp.float32))
    meta = {"format": FORMAT, "geometry": geometry(cfg), "dtype": str(mem.k.dtype),
            "sizes": mem.host_sizes(), "extra": extra or {}, **(meta or {})}
    if fingerprint is not None:
        meta["model_fingerprint"] = fingerprint
    with atomic_path(path, "memory file", errors=(OSError, SafetensorError)) as tmp:
        save_file({"k": k, "v": v, **(tensors or {})}, tmp, metadata={"vxl": json.dumps(meta)})


def load_memory(path, cfg: VideoXLConfig, dtype=jnp.float32, fingerprint: str | None = None) -> tuple[KVMemory, dict]:
    """-> (memory, the ``extra`` dict it was saved with): :func:`read_memory_file`'s first two."""
    mem, meta, _ = read_memory_file(path, cfg, dtype, fingerprint)
    return mem, meta.get("extra", {})


def read_memory_file(path, cfg: VideoXLConfig, dtype=jnp.float32, fingerprint: str | None = None):
    """-> (memory, the file's metadata, its other arrays by name). With ``fingerprint`` (this model's
    fingerprint), a file saved with another model's fingerprint is refused
    (``MemoryMismatchError``); files saved without one are accepted on geometry alone."""
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
    if meta["geometry"] != geometry(cfg):
        raise MemoryMismatchError(f"memory {path} was made by a model with geometry {meta['geometry']}, "
                                  f"this model has {geometry(cfg)}")
    saved = meta.get("model_fingerprint")
    if fingerprint is not None and saved is not None and saved != fingerprint:
        raise MemoryMismatchError(mismatch_message(path, saved, fingerprint))
    s = meta["sizes"]
    as_i32 = lambda x: jnp.array([x], jnp.int32)  # noqa: E731
    mem = KVMemory(jnp.asarray(arrays["k"], dtype)[:, None], jnp.asarray(arrays["v"], dtype)[:, None],
                   as_i32(s["total"]), as_i32(s["prefix"]), as_i32(s["beacons"]), as_i32(s["text"]))
    return mem, meta, {name: a for name, a in arrays.items() if name not in ("k", "v")}


def save_video_memory(path, memory: VideoMemory | KVMemory, cfg: VideoXLConfig, fingerprint: str) -> None:
    """A :class:`VideoMemory` (its K/V, prompt ids, frame and visual-token counts) -> ``path``."""
    if not isinstance(memory, VideoMemory):
        memory = VideoMemory(memory, np.zeros((0,), np.int32))
    save_memory(path, memory.kv, cfg, extra=video_facts(memory.prompt_ids, memory.frames, memory.visual_tokens),
                fingerprint=fingerprint)


def video_facts(prompt_ids, frames: int, visual_tokens: int) -> dict:
    """The JSON facts a memory file keeps beside the K/V of a video memory."""
    return {"prompt_ids": [int(i) for i in prompt_ids], "frames": int(frames), "visual_tokens": int(visual_tokens)}


def load_video_memory(path, cfg: VideoXLConfig, dtype, fingerprint: str) -> VideoMemory:
    """:func:`save_video_memory`'s file (or a session file: the video memory of its complete windows)."""
    kv, extra = load_memory(path, cfg, dtype=dtype, fingerprint=fingerprint)
    return VideoMemory(kv, np.asarray(extra.get("prompt_ids", []), np.int32), int(extra.get("frames", 0)),
                       int(extra.get("visual_tokens", 0)))
