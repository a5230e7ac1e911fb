"""Jitted inference steps over explicit state: prompt text, window scan, decoding.

Every function takes the model's parameter state (``nnx.split``) and a :class:`KVMemory` and returns
a new memory; nothing is hidden in the module. Compiled executables are cached by input shapes,
and compile time is accounted separately from run time (``Engine.stats``).
"""

from __future__ import annotations

import ctypes
import functools
import time

import jax
from flax import nnx

from vxl_jax.runtime import sharding as sh
from vxl_jax.beacon.text import text_step
from vxl_jax.beacon.windows import compress_windows
from vxl_jax.infer.decode import decode_chunk
from vxl_jax.beacon.memory import KVMemory


def _text_chunk(graphdef, state, mem: KVMemory, ids, n, *, kind: str):
    """ids [B, T] (first n[b] valid) after the memory -> (fp32 logits [B, T, V], memory with them appended)."""
    model = nnx.merge(graphdef, state)
    hidden, mem = text_step(model, mem, model.lm.embed_tokens(ids, model.compute_dtype), n, kind=kind)
    return model.lm.logits(hidden), mem


def _windows(graphdef, state, mem, windows, n_valid, ratio_idx, *, ratios, from_pixels, keep):
    model = nnx.merge(graphdef, state)
    return compress_windows(model, mem, windows, n_valid, ratio_idx, ratios=ratios, from_pixels=from_pixels, keep=keep)


def _features(graphdef, state, pixels, *, pooled: bool):
    model = nnx.merge(graphdef, state)
    if pooled:
        return model.encode_frames(pixels)
    return model.projector(model.vision_features(pixels))


@functools.cache
def _host_libc():
    """glibc when device buffers live in host RAM (CPU backend), else None."""
    try:
        return ctypes.CDLL("libc.so.6") if jax.default_backend() == "cpu" else None
    except OSError:  # not glibc
        return None


def _trim_host_heap() -> None:
    """On the CPU backend, hand freed heap pages back to the OS after a window call: each call allocates
    and frees ~100 MB of temporaries, and glibc otherwise keeps the fragments, so the process's RSS crept
    up by ~0.15 MiB per frame of video. No-op elsewhere."""
    libc = _host_libc()
    if libc is not None:
        libc.malloc_trim(0)


class Engine:
    """Holds ``(graphdef, state)`` and a cache of compiled steps."""

    def __init__(self, model, mesh=None, rules=sh.INFERENCE_PRESET):
        """``mesh``: a ``(data, fsdp, tensor)`` Mesh (see :func:`vxl_jax.runtime.sharding.inference_mesh`) or None
        (one device). With a mesh the parameters are placed by ``rules``, every step is traced under
        :class:`~vxl_jax.runtime.sharding.activation_sharding`, memories are kept on their memory shardings and
        the other inputs / outputs are replicated."""
        self.graphdef, self.state = nnx.split(model)
        self.cfg = model.cfg
        self.mesh, self.rules = mesh, rules
        if mesh is not None:
            self.state = sh.shard_state(self.state, mesh, rules)
        self._compiled: dict = {}
        self.compile_s = 0.0
        self.run_s = 0.0

    def _place(self, args):
        """On a mesh: memories onto their shardings, other arrays replicated (the state is placed already)."""
        if self.mesh is None:
            return args
        return tuple(a if isinstance(a, nnx.State) else sh.place_memory(a, self.mesh, self.rules)
                     if isinstance(a, KVMemory) else sh.place_replicated(a, self.mesh) for a in args)

    def _traced(self, fn, static):
        """``fn`` bound to the graphdef and static arguments; on a mesh traced under the activation rules, its
        memory outputs pinned to the memory shardings and every other output replicated."""
        if self.mesh is None:
            return lambda *a: fn(self.graphdef, *a, **static)

        def pinned(*a):
            with sh.activation_sharding(self.mesh, self.rules):
                out = fn(self.graphdef, *a, **static)
                return jax.tree.map(lambda x: sh.pin_memory(x) if isinstance(x, KVMemory) else sh.pin_replicated(x),
                                    out, is_leaf=lambda x: isinstance(x, KVMemory))

        return pinned

    def _run(self, name, fn, static: dict, *args, donate: tuple = ()):
        args = self._place(args)
        key = (name, tuple(sorted(static.items())), donate,
               tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(args)))
        exe = self._compiled.get(key)
        if exe is None:
            t0 = time.perf_counter()
            jitted = jax.jit(self._traced(fn, static), donate_argnums=donate)
            exe = jitted.lower(*args).compile()
            self._compiled[key] = exe
            self.compile_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        out = exe(*args)
        jax.block_until_ready(out)
        self.run_s += time.perf_counter() - t0
        return out

    def text(self, mem: KVMemory, ids, n, kind: str = "text", donate: bool = False):
        return self._run("text", _text_chunk, {"kind": kind}, self.state, mem, ids, n, donate=(1,) if donate else ())

    def decode(self, mem: KVMemory, last, seen, key, stops, remaining, *, params, chunk: int,
               return_logits: bool = False, rows=None, sample: bool = True):
        """Up to ``chunk`` tokens in one compiled loop (:func:`vxl_jax.infer.decode.decode_chunk`); the memory
        and the seen mask are donated. Each token is the text step over the memory (the attention backend of
        ``runtime.attention``, as every other step). One compilation per memory capacity, chunk and sampling
        setting; with ``params`` None, ``rows`` (a ``RowParams``) gives each row its own setting as data: one
        compilation per memory capacity, chunk and ``sample`` (whether any row samples)."""
        static = {"params": params, "chunk": chunk, "return_logits": return_logits, "feed": _text_chunk}
        extra = ()
        if rows is not None:
            static["sample"], extra = bool(sample), (rows,)
        return self._run("decode", decode_chunk, static, self.state, mem, last, seen, key, stops, remaining, *extra,
                         donate=(1, 3))

    def windows(self, mem, windows, n_valid, ratio_idx, *, ratios, from_pixels: bool, keep: bool = True):
        out = self._run("windows", _windows, {"ratios": tuple(ratios), "from_pixels": from_pixels, "keep": keep},
                        self.state, mem, windows, n_valid, ratio_idx, donate=(1,))
        _trim_host_heap()
        return out

    def features(self, pixels, pooled: bool = True):
        return self._run("features", _features, {"pooled": pooled}, self.state, pixels)

    def compiled_memory(self):
        """``memory_analysis()`` of every compiled step, by name."""
        out = {}
        for key, exe in self._compiled.items():
            out.setdefault(key[0], []).append(exe.memory_analysis())
        return out
