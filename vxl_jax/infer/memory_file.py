"""Save / load a compressed video memory (``KVMemory``, batch 1) as safetensors + JSON metadata.

Only the valid slots are stored. The metadata names the model geometry and a fingerprint of the
model's weights (:func:`model_fingerprint`), so loading a memory into a model of another shape, or into
another model of the same shape, is a clear error instead of garbage.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from vxl_jax.config import VideoXLConfig
from vxl_jax.beacon.memory import KVMemory
from vxl_jax.infer.results import VideoMemory

FORMAT = "vxl-jax-memory-v1"


def geometry(cfg: VideoXLConfig) -> dict:
    lm = cfg.lm
    return {"num_layers": lm.num_layers, "num_kv_heads": lm.num_kv_heads, "head_dim": lm.head_dim,
            "hidden_size": lm.hidden_size, "vocab_size": lm.vocab_size, "rope_theta": lm.rope_theta}


FINGERPRINT_ROWS = 4  # leading rows of the token embedding that enter the fingerprint


class MemoryMismatchError(ValueError):
    """A memory file made by another model (other geometry or other weights)."""


def model_fingerprint(model, cfg: VideoXLConfig) -> str:
    """A short hash of the geometry and a few parameter values: the beacon embedding, the first
    ``FINGERPRINT_ROWS`` rows of the token embedding and the first row of the projector's output layer.

    Values are rounded to bfloat16 first, so a checkpoint loaded as float32 or as bfloat16 gives the same
    fingerprint; two differently trained (or randomly initialised) models differ. Cheap: a few rows are read
    from the device.
    """
    import ml_dtypes

    parts = [model.lm.beacon_embed[...], model.lm.embed[...][:FINGERPRINT_ROWS],
             model.projector.fc2.kernel[...][0]]  # the projector too: stage-1 training changes only it
    h = hashlib.sha256(json.dumps(geometry(cfg), sort_keys=True).encode())
    for x in parts:
        h.update(np.asarray(np.asarray(x, np.float32).astype(ml_dtypes.bfloat16)).tobytes())
    return h.hexdigest()[:16]


def save_memory(path, mem: KVMemory, cfg: VideoXLConfig, extra: dict | None = None,
                fingerprint: str | None = None, *, tensors: dict | None = None, meta: dict | None = None) -> None:
    """``extra``: JSON-able facts stored beside the K/V (e.g. prompt ids, frame count); ``fingerprint``: the
    producing model's :func:`model_fingerprint` (checked by :func:`load_memory`); ``tensors`` / ``meta``: more
    arrays and metadata keys stored in the same file (a session's pending frames and state)."""
    if mem.k.shape[1] != 1:
        raise ValueError(f"save_memory stores one prompt's memory (batch 1), got batch {mem.k.shape[1]}")
    n = int(np.asarray(mem.length)[0])
    k = np.asarray(mem.k[:, 0, :n].astype(jnp.float32))
    v = np.asarray(mem.v[:, 0, :n].astype(jnp.float32))
    meta = {"format": FORMAT, "geometry": geometry(cfg), "dtype": str(mem.k.dtype),
            "sizes": mem.host_sizes(), "extra": extra or {}, **(meta or {})}
    if fingerprint is not None:
        meta["model_fingerprint"] = fingerprint
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({"k": k, "v": v, **(tensors or {})}, str(path), metadata={"vxl": json.dumps(meta)})


def load_memory(path, cfg: VideoXLConfig, dtype=jnp.float32, fingerprint: str | None = None) -> tuple[KVMemory, dict]:
    """-> (memory, the ``extra`` dict it was saved with): :func:`read_memory_file`'s first two."""
    mem, meta, _ = read_memory_file(path, cfg, dtype, fingerprint)
    return mem, meta.get("extra", {})


def read_memory_file(path, cfg: VideoXLConfig, dtype=jnp.float32, fingerprint: str | None = None):
    """-> (memory, the file's metadata, its other arrays by name). With ``fingerprint`` (this model's
    :func:`model_fingerprint`), a file saved with another model's fingerprint is refused
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
        raise MemoryMismatchError(
            f"memory {path} was made by another model (fingerprint {saved}, this model's is {fingerprint}); "
            f"encode the video again with this model (--save-memory)")
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
