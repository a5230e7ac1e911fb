"""User-facing API.

    vx = VideoXL.load("converted_dir", dtype="bfloat16")
    res = vx.prefill(input_ids, pixel_values, ratio=8)      # .logits [S, vocab] fp32, .memory
    new_ids = vx.generate(input_ids, pixel_values, ratio=8, max_new_tokens=64)

``input_ids`` are 1-D token ids with exactly one ``-200`` placeholder where the video goes (or none:
text only). ``pixel_values`` are preprocessed float32 frames [F, 3, 336, 336], or raw uint8 frames
[F, H, W, 3] (CLIP-preprocessed here: resized and cropped on the host per scan call, sent to the device
as uint8 and normalized there; :func:`vxl_jax.media.preprocess.resize_crop_frames` output is taken as is).
"""

from __future__ import annotations

import resource
import time
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from vxl_jax.infer.batched import generate_batch, is_batch
from vxl_jax.beacon.ratios import DEFAULT_RATIO  # noqa: F401 (re-exported)
from vxl_jax.beacon.ratios import ORIGINAL_RATIO_SEED, ratio_schedule
from vxl_jax.beacon.windows import window_token_counts
from vxl_jax.config import VideoXLConfig
from vxl_jax.text.constants import IMAGE_TOKEN_INDEX
from vxl_jax.infer.decode import stop_mask
from vxl_jax.infer.engine import Engine
from vxl_jax.beacon.memory import KVMemory
from vxl_jax.infer import memory_file
from vxl_jax.model import VideoXLModel
from vxl_jax.model.layers import dtype_of
from vxl_jax.media.preprocess import preprocess_frames, resize_crop_frames
from vxl_jax.infer.results import FRAME_CALL_WINDOWS as _FRAME_CALL_WINDOWS
from vxl_jax.infer.results import SLOT_BUCKET as _SLOT_BUCKET
from vxl_jax.infer.results import TEXT_BUCKET as _TEXT_BUCKET
from vxl_jax.infer.results import GenerateOutput, PrefillResult, VideoMemory, ensure_capacity, split_prompt
from vxl_jax.infer.results import chunk_sizes as _chunk_sizes
from vxl_jax.infer.results import round_up as _round_up
from vxl_jax.infer.sampling import SamplingParams, seen_mask
from vxl_jax.infer.session import Session, load, start
from vxl_jax.runtime.sharding import INFERENCE_PRESET, inference_mesh, shard_model

DECODE_CHUNK = 16  # tokens per compiled decode call (the streaming granularity)


class VideoXL:
    """A loaded Video-XL: config, parameters, tokenizer and generation defaults.

    State a caller can see (and nothing else changes between calls):

    * ``ratio_rng``: the "step-random" ratio generator (a ``numpy.random.Generator``). A list of ratios draws
      each window's ratio from it; a freshly loaded model seeds it with the original's ``default_rng(42)``, and
      it continues across calls as the original's does. Pass ``ratio_rng=`` to :meth:`prefill` /
      :meth:`generate` to draw from your own generator instead (this one is then untouched), or call
      :meth:`reset_ratio_rng`.
    * ``stats``: the read-only report of the last :meth:`prefill` / :meth:`generate` call (built once per call,
      never patched). Each call also returns its own report: ``PrefillResult.stats``, or
      ``GenerateOutput.prompt`` / ``.decode`` with ``generate(..., return_output=True)``.
    """

    def __init__(self, cfg: VideoXLConfig, model: VideoXLModel, tokenizer: Any = None,
                 generation_config: dict | None = None, mesh=None):
        """``mesh``: None (one device), a dict of axis sizes over ``data`` / ``fsdp`` / ``tensor`` (e.g.
        ``{"tensor": 4}``), its text form ``"tensor=4"``, or a ``jax.sharding.Mesh``: parameters placed by the
        ``inference`` rules of :mod:`vxl_jax.runtime.sharding` (tensor parallel over heads and MLP, KV memory over KV
        heads, batches over ``data``), and every step runs on that mesh."""
        self.cfg = cfg
        self.mesh = inference_mesh(mesh)
        self.model = model if self.mesh is None else shard_model(model, self.mesh, INFERENCE_PRESET)
        self.tokenizer = tokenizer
        self.generation_config = dict(generation_config or {})
        self.engine = Engine(self.model, mesh=self.mesh)
        self.ratio_rng = np.random.default_rng(ORIGINAL_RATIO_SEED)  # see the class docstring
        self._last_report: Mapping[str, Any] = MappingProxyType({})
        self._fingerprint: str | None = None

    @classmethod
    def load(cls, path, dtype: str = "float32", mesh=None) -> "VideoXL":
        """Load a folder written by ``convert_weights.py`` (config, params, tokenizer, generation config).
        ``mesh``: see :class:`VideoXL` (parameters are restored straight onto their shards)."""
        mesh = inference_mesh(mesh)
        from vxl_jax.convert.folder import load_converted  # the converter stack (orbax, tensorstore): on load only

        cfg, model, tokenizer, gen = load_converted(path, dtype=dtype, mesh=mesh, rules=INFERENCE_PRESET)
        return cls(cfg, model, tokenizer, gen, mesh=mesh)

    @property
    def stats(self) -> Mapping[str, Any]:
        """Read-only report of the last :meth:`prefill` / :meth:`generate` call (see the class docstring)."""
        return self._last_report

    def reset_ratio_rng(self, seed: int = ORIGINAL_RATIO_SEED) -> None:
        """Restart the step-random ratio generator (the default seed is the original's, as on load)."""
        self.ratio_rng = np.random.default_rng(seed)

    def _report(self, report: dict) -> Mapping[str, Any]:
        """Freeze one call's report and make it the last one."""
        self._last_report = MappingProxyType(dict(report))
        return self._last_report

    # ------------------------------------------------------------------ inputs

    @property
    def _dtype(self):
        return dtype_of(self.cfg.runtime.compute_dtype)

    def _pixels(self, pixel_values, keep_uint8: bool = False) -> np.ndarray:
        """-> float32 preprocessed frames [F, 3, S, S]. Raw uint8 frames [F, H, W, 3] (or one [H, W, 3]) are
        CLIP-preprocessed here, or with ``keep_uint8`` returned as given (checked, not copied) for
        :meth:`_window_chunk` to resize per scan call. float32 input is not copied."""
        px = np.asarray(pixel_values)
        v = self.cfg.vision
        if px.ndim in (3, 4) and px.dtype == np.uint8 and px.shape[-1] == 3:
            px = px if px.ndim == 4 else px[None]
            if px.shape[0] == 0 or min(px.shape[1:3]) < 1:
                raise ValueError(f"pixel_values has no frames or an empty frame size: {px.shape}")
            if keep_uint8:
                return px
            px = preprocess_frames(px, size=v.image_size)
        if px.ndim == 3:
            px = px[None]
        if px.ndim != 4 or px.shape[1:] != (v.num_channels, v.image_size, v.image_size):
            raise ValueError(
                f"pixel_values must be float [F, {v.num_channels}, {v.image_size}, {v.image_size}] or uint8 "
                f"[F, H, W, 3], got {px.dtype} {px.shape}")
        if px.shape[0] == 0:
            raise ValueError("pixel_values has zero frames")
        return px.astype(np.float32, copy=False)

    def _window_chunk(self, source: np.ndarray, first: int, windows: int, per_window: int) -> jax.Array:
        """Rows ``[first * per_window, (first + windows) * per_window)`` of the video input, zero-padded past its
        end -> device array [windows, 1, per_window, *row]. Raw uint8 frames are resized + center-cropped here
        and stay uint8 [.., S, S, 3] (normalized on device); float frames / features go in the compute dtype."""
        rows = source[first * per_window:(first + windows) * per_window]
        if source.dtype == np.uint8:
            rows = resize_crop_frames(rows, size=self.cfg.vision.image_size)
        if len(rows) < windows * per_window:  # only the last scan call
            rows = np.concatenate([rows, np.zeros((windows * per_window - len(rows), *rows.shape[1:]), rows.dtype)])
        dtype = np.uint8 if rows.dtype == np.uint8 else self._dtype
        return jnp.asarray(rows.reshape(windows, 1, per_window, *rows.shape[1:]), dtype)

    def _ratio_schedule(self, ratio, num_visual: int, rng=None) -> tuple[tuple[int, ...], np.ndarray]:
        """-> (distinct ratios, per-window index) (:func:`vxl_jax.beacon.ratios.ratio_schedule`); a list of ratios
        (step-random mode) draws from ``rng``, else from ``self.ratio_rng``."""
        return ratio_schedule(self.cfg.beacon, ratio, num_visual, self.ratio_rng if rng is None else rng)

    def _empty_memory(self, slots: int) -> KVMemory:
        lm = self.cfg.lm
        return KVMemory.empty(lm.num_layers, 1, _round_up(slots, _SLOT_BUCKET), lm.num_kv_heads, lm.head_dim,
                              self._dtype)

    def _text(self, mem: KVMemory, ids: np.ndarray, kind: str, donate: bool = False):
        n = len(ids)
        padded = np.zeros((1, _round_up(n, _TEXT_BUCKET)), np.int32)
        padded[0, :n] = ids
        logits, mem = self.engine.text(mem, jnp.asarray(padded), jnp.array([n], jnp.int32), kind=kind, donate=donate)
        return logits[0, :n], mem

    # ------------------------------------------------------------------ visual tokens

    def image_features(self, pixel_values) -> np.ndarray:
        """Anyres image views [1 + T, 3, S, S] -> [144 T, D] (base view dropped, tiles pooled);
        a single view [1, 3, S, S] -> its 576 unpooled projector rows (docs/algorithm.md §1)."""
        px = self._pixels(pixel_values)
        if px.shape[0] == 1:
            return np.asarray(self.engine.features(jnp.asarray(px), pooled=False))[0]
        f = np.asarray(self.engine.features(jnp.asarray(px[1:]), pooled=True))
        return f.reshape(-1, f.shape[-1])

    # ------------------------------------------------------------------ prefill

    def prefill(self, input_ids, pixel_values=None, ratio: int | Sequence[int] | None = None, *,
                features=None, extra_slots: int = 0, progress: bool = False, keep_memory: bool = True,
                ratio_rng: np.random.Generator | None = None) -> PrefillResult:
        """Run the prompt; returns logits of the text after the video and the compressed memory.

        ratio: an int (fixed for every window; default 8) or a list of ratios for the original's
        "step-random" mode (one draw per window from ``ratio_rng``, default ``self.ratio_rng``: the original's
        ``default_rng(42)`` sequence, continuing across calls).
        features: precomputed visual tokens [N, D] instead of ``pixel_values`` (e.g. image tiles).
        extra_slots: memory room to reserve for generation.
        keep_memory=False drops every beacon (ablation: the text sees no video).
        """
        t_start = time.perf_counter()
        c0, r0 = self.engine.compile_s, self.engine.run_s
        prefix, suffix = split_prompt(input_ids)
        if suffix is None:
            if pixel_values is not None or features is not None:
                raise ValueError("pixel_values given but input_ids have no -200 video placeholder")
            mem = self._empty_memory(len(prefix) + extra_slots + _TEXT_BUCKET)
            logits, mem = self._text(mem, prefix, "text", donate=True)
            stats = self._prompt_report(t_start, c0, r0, frames=0, visual=0, mem=mem)
            return PrefillResult(np.asarray(logits, np.float32), mem, stats=stats)
        if pixel_values is None and features is None:
            raise ValueError("input_ids contain the -200 video placeholder but no pixel_values were given")
        b = self.cfg.beacon
        if features is not None:
            feats = np.asarray(features, np.float32)
            num_visual, frames = feats.shape[0], 0
        else:
            px = self._pixels(pixel_values, keep_uint8=True)  # raw uint8 frames are resized per scan call
            frames = px.shape[0]
            num_visual = frames * b.tokens_per_frame
        ratios, ratio_idx = self._ratio_schedule(ratio, num_visual, ratio_rng)
        n_windows = len(ratio_idx)
        max_beacons = n_windows * (b.window // min(ratios))
        mem = self._empty_memory(len(prefix) + max_beacons + len(suffix) + extra_slots + 2 * _TEXT_BUCKET)
        if len(prefix):
            _, mem = self._text(mem, prefix, "prefix", donate=True)
        source = feats if features is not None else px
        mem = self._compress_video(mem, source, num_visual, ratios, ratio_idx, from_pixels=features is None,
                                   keep_memory=keep_memory, progress=progress)
        logits, mem = self._text(mem, suffix, "text", donate=True)
        # The memory is append-only: the video memory is the full memory read up to its video length, so it
        # shares the K/V buffers (one copy on the device, not two). Nothing ever donates a user-held memory.
        n = len(suffix)
        video_mem = VideoMemory(mem.replace(length=mem.length - n, n_text=mem.n_text - n), prefix, frames, num_visual)
        stats = self._prompt_report(t_start, c0, r0, frames=frames, visual=num_visual, mem=mem)
        return PrefillResult(np.asarray(logits, np.float32), mem, video_mem, tuple(ratios[i] for i in ratio_idx),
                             stats=stats)

    def _compress_video(self, mem: KVMemory, source: np.ndarray, num_visual: int, ratios, ratio_idx, *,
                        from_pixels: bool, keep_memory: bool, progress: bool) -> KVMemory:
        """Run the window scan over the video (frames, or visual-token rows when not ``from_pixels``), a few
        windows per compiled call; window inputs are prepared per call (no padded copy of the video on the host)."""
        b = self.cfg.beacon
        n_windows = len(ratio_idx)
        counts = np.asarray(window_token_counts(np.array([num_visual], np.int32), n_windows, b.window))  # [W, 1]
        per_window = b.frames_per_window if from_pixels else b.window
        bar = tqdm(total=n_windows, desc="windows", unit="win", disable=not progress, leave=False)
        start = 0
        for size in _chunk_sizes(n_windows, _FRAME_CALL_WINDOWS if from_pixels else 8):
            sl = slice(start, start + size)
            inputs = self._window_chunk(source, start, size, per_window)
            mem = self.engine.windows(mem, inputs, jnp.asarray(counts[sl]), jnp.asarray(ratio_idx[sl]),
                                      ratios=ratios, from_pixels=from_pixels, keep=keep_memory)
            start += size
            bar.update(size)
        bar.close()
        return mem

    def _prompt_report(self, t_start, c0, r0, *, frames, visual, mem) -> Mapping[str, Any]:
        sizes = mem.host_sizes()
        return self._report({
            "frames": frames, "visual_tokens": visual, "kept_kv": sizes["total"], "memory_sizes": sizes,
            "compile_s": self.engine.compile_s - c0, "run_s": self.engine.run_s - r0,
            "wall_s": time.perf_counter() - t_start, "peak_mem_bytes": _peak_memory_bytes(),
        })

    # ------------------------------------------------------------------ generation

    def sampling_params(self, do_sample=None, temperature=None, top_k=None, top_p=None,
                        repetition_penalty=None) -> SamplingParams:
        """Explicit arguments, else the checkpoint's generation_config.json, else greedy."""
        g = self.generation_config
        pick = lambda v, key, default: v if v is not None else g.get(key, default)  # noqa: E731
        do_sample = bool(pick(do_sample, "do_sample", False))
        return SamplingParams(
            do_sample=do_sample,
            temperature=float(pick(temperature, "temperature", 1.0)) if do_sample else 1.0,
            top_k=int(pick(top_k, "top_k", 0) or 0) if do_sample else 0,
            top_p=float(pick(top_p, "top_p", 1.0) or 1.0) if do_sample else 1.0,
            repetition_penalty=float(pick(repetition_penalty, "repetition_penalty", 1.0)),
        )

    def stop_ids(self) -> set[int]:
        eos = self.generation_config.get("eos_token_id", self.cfg.lm.eos_token_id)
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if self.tokenizer is not None:
            for tok in ("<|im_end|>", "<|endoftext|>"):
                tid = self.tokenizer.convert_tokens_to_ids(tok)
                if isinstance(tid, int) and tid >= 0 and tid != getattr(self.tokenizer, "unk_token_id", None):
                    ids.add(tid)
        return ids

    def generate(self, input_ids, pixel_values=None, ratio=None, max_new_tokens: int | None = None, *,
                 do_sample=None, temperature=None, top_k=None, top_p=None, repetition_penalty=None, seed: int = 0,
                 memory: VideoMemory | KVMemory | None = None, stop_ids=None, features=None, progress: bool = False,
                 return_logits: bool = False, stream=None, chunk: int = DECODE_CHUNK, return_output: bool = False,
                 ratio_rng: np.random.Generator | None = None):
        """Generate new token ids (np.int32 1-D, the stop token included if reached).

        Decoding runs on device, ``chunk`` tokens per compiled call; ``stream``, if given, is called
        with each call's new ids (np.int32 1-D) as they arrive. ``seed`` seeds the draws
        (``jax.random.PRNGKey(seed)``). ``return_logits``: also the fp32 [n, V] logits each token was
        chosen from (before the logits processors). ``return_output``: return a
        :class:`vxl_jax.infer.results.GenerateOutput` instead (ids, step logits, the memory after generation, and
        this call's prompt / decode reports). ``ratio_rng``: as in :meth:`prefill`.

        With ``memory`` (a saved video memory: prefix + beacons), ``input_ids`` are only the text that
        follows the video (e.g. "\\n{question}<|im_end|>\\n<|im_start|>assistant\\n"): nothing is re-encoded.

        Lists (batched answering, :mod:`vxl_jax.infer.batched`): ``input_ids`` a list of B prompts, ``pixel_values``
        None or a list of B entries (None: text only), ``memory`` one video memory for every row or a list of B,
        ``seed`` an int or B ints -> a list of B id arrays (each equal to its single call), and with
        ``return_logits`` a list of B step-logit arrays too. One int ``ratio`` for the videos of one call.
        """
        max_new = int(max_new_tokens if max_new_tokens is not None else self.generation_config.get("max_new_tokens", 64))
        if max_new < 1:
            raise ValueError("max_new_tokens must be >= 1")
        params = self.sampling_params(do_sample, temperature, top_k, top_p, repetition_penalty)
        stops = set(stop_ids) if stop_ids is not None else self.stop_ids()
        if is_batch(input_ids) or isinstance(memory, (list, tuple)):
            return self._generate_batch(input_ids, pixel_values, ratio, max_new, params=params, stops=stops,
                                        seed=seed, memory=memory, return_logits=return_logits, chunk=chunk,
                                        features=features, stream=stream, return_output=return_output)
        if memory is not None:
            logits, mem, prompt, seen = self._text_over_memory(memory, input_ids, max_new)
        else:
            res = self.prefill(input_ids, pixel_values, ratio, features=features, extra_slots=max_new + _TEXT_BUCKET,
                               progress=progress, ratio_rng=ratio_rng)
            logits, mem, prompt = res.logits, res.memory, res.stats
            ids = np.asarray(input_ids)
            seen = ids[ids >= 0]
        c0, r0 = self.engine.compile_s, self.engine.run_s
        # a stream shows the progress itself (and a bar would interleave with it on a terminal)
        bar = tqdm(total=max_new, desc="generate", unit="tok", disable=not progress or stream is not None, leave=False)

        def on_chunk(new):
            bar.update(len(new))
            if stream is not None:
                stream(new)

        out, step_logits, mem = self._decode(mem, logits[-1], seen, params=params, stops=stops, max_new=max_new,
                                             seed=seed, chunk=chunk, return_logits=return_logits, on_chunk=on_chunk)
        bar.close()
        decode = MappingProxyType({"generated": len(out), "decode_compile_s": self.engine.compile_s - c0,
                                   "decode_run_s": self.engine.run_s - r0, "kept_kv": int(np.asarray(mem.length)[0]),
                                   "peak_mem_bytes": _peak_memory_bytes()})
        result = GenerateOutput(out, mem, prompt, decode, step_logits)
        self._report(result.stats)
        if return_output:
            return result
        return (out, step_logits) if return_logits else out

    def _text_over_memory(self, memory: VideoMemory | KVMemory, input_ids, max_new: int):
        """The prompt stage of ``generate(..., memory=...)``: the text after the video over a saved memory (a copy
        with room for ``max_new`` tokens; the caller's memory is never donated) -> (fp32 logits [S, V], memory,
        report, ids the repetition penalty starts from)."""
        t_start = time.perf_counter()
        c0, r0 = self.engine.compile_s, self.engine.run_s
        if not isinstance(memory, VideoMemory):
            memory = VideoMemory(memory, np.zeros((0,), np.int32))
        ids = np.asarray(input_ids)
        if (ids == IMAGE_TOKEN_INDEX).any():
            raise ValueError("with memory=..., input_ids must be the text after the video (no -200 placeholder)")
        kv = memory.kv
        mem = ensure_capacity(kv, int(np.asarray(kv.length)[0]) + len(ids) + max_new + _TEXT_BUCKET)
        logits, mem = self._text(mem, ids.astype(np.int32), "text")
        report = self._prompt_report(t_start, c0, r0, frames=memory.frames, visual=memory.visual_tokens, mem=mem)
        return np.asarray(logits, np.float32), mem, report, np.concatenate([memory.prompt_ids, ids[ids >= 0]])

    def _generate_batch(self, input_ids, pixel_values, ratio, max_new, *, params, stops, seed, memory, return_logits,
                        chunk, features, stream, return_output=False):
        """Lists in (B prompts), a list of id arrays out: :func:`vxl_jax.infer.batched.generate_batch`."""
        if not is_batch(input_ids):
            raise ValueError("with a list of memories, input_ids must be a list of 1-D id arrays (one per memory)")
        if features is not None or stream is not None:
            raise ValueError("features= and stream= take one prompt; call generate once per prompt for them")
        if pixel_values is not None and not isinstance(pixel_values, (list, tuple)):
            raise ValueError("with a list of prompts, pixel_values must be a list (one entry per prompt, None for "
                             "text only) or None")
        t_start = time.perf_counter()
        c0, r0 = self.engine.compile_s, self.engine.run_s
        out, step_logits, mem = generate_batch(self, list(input_ids), pixel_values, ratio, max_new=max_new,
                                               params=params, stops=stops, seed=seed, memory=memory,
                                               return_logits=return_logits, chunk=chunk)
        report = self._report({"batch": len(out), "generated": [len(o) for o in out],
                               "kept_kv": [int(x) for x in np.asarray(mem.length)],
                               "compile_s": self.engine.compile_s - c0, "run_s": self.engine.run_s - r0,
                               "wall_s": time.perf_counter() - t_start, "peak_mem_bytes": _peak_memory_bytes()})
        if return_output:  # one report for the whole batched call (prompts and decoding run together)
            return GenerateOutput(out, mem, report, MappingProxyType({}), step_logits)
        return (out, step_logits) if return_logits else out

    def _decode(self, mem: KVMemory, last, seen_ids, *, params: SamplingParams, stops, max_new: int, seed: int,
                chunk: int, return_logits: bool, on_chunk=None):
        """Chunked on-device decoding from the last prompt logits [V] -> (ids int32 [n], fp32 [n, V]
        step logits or None, memory). ``seen_ids``: the ids the repetition penalty starts from."""
        ids, logits, mem = self._decode_rows(mem, np.asarray(last)[None], [seen_ids], params=params, stops=stops,
                                             max_new=max_new, seeds=[seed], chunk=chunk, return_logits=return_logits,
                                             on_chunk=None if on_chunk is None else (lambda rows: on_chunk(rows[0])))
        return ids[0], (logits[0] if return_logits else None), mem

    def _decode_rows(self, mem: KVMemory, last, seen_ids, *, params: SamplingParams, stops, max_new: int, seeds,
                     chunk: int, return_logits: bool, on_chunk=None):
        """B rows in lockstep: last logits [B, V], ``seen_ids`` (B id arrays), ``seeds`` (B ints) -> (B id
        arrays, B fp32 [n_b, V] step-logit arrays or None, memory). ``on_chunk``: called with each call's new
        ids per row (a list of B arrays)."""
        last = np.asarray(last, np.float32)
        B, vocab = last.shape
        seen = jnp.stack([seen_mask(np.asarray(s), vocab) for s in seen_ids])
        keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])
        state = (jnp.asarray(last), seen, keys)
        stops = stop_mask(stops, vocab)
        out = [[] for _ in range(B)]
        step_logits = [[] for _ in range(B)]
        produced = np.zeros(B, np.int64)
        done = np.zeros(B, bool)
        while not done.all():
            remaining = np.where(done, 0, max_new - produced).astype(np.int32)
            toks, n, dn, mem, seen, key, last_, lg = self.engine.decode(
                mem, *state, stops, jnp.asarray(remaining), params=params, chunk=chunk, return_logits=return_logits)
            state = (last_, seen, key)
            toks, n, done = np.asarray(toks), np.asarray(n), np.asarray(dn).copy()
            lg = np.asarray(lg, np.float32) if return_logits else None
            new = []
            for b in range(B):
                new.append(toks[b, :n[b]].astype(np.int32))
                out[b].append(new[-1])
                if return_logits:
                    step_logits[b].append(lg[b, :n[b]])
            produced += n
            if on_chunk is not None:
                on_chunk(new)
        ids = [np.concatenate(o) for o in out]
        return ids, ([np.concatenate(s) for s in step_logits] if return_logits else None), mem

    # ------------------------------------------------------------------ incremental ingestion

    def session(self, prefix_ids=None, ratio: int | Sequence[int] | None = None, *, seed: int = 42):
        """A :class:`vxl_jax.infer.session.Session`: frames added a few at a time (``s.add_frames``), questions at any
        point (``s.prefill`` / ``s.generate``), ``s.save``. ``prefix_ids``: the token ids before the video.
        ``ratio``: as :meth:`prefill`; a list draws per window from the session's own ``default_rng(seed)``."""
        return Session(self, start(self, prefix_ids, ratio, seed))

    def load_session(self, path, ratio: int | Sequence[int] | None = None):
        """A session saved by ``Session.save`` (or one continuing a memory saved by :meth:`save_memory`)."""
        return Session(self, load(self, path, ratio))

    # ------------------------------------------------------------------ memory persistence

    def fingerprint(self) -> str:
        """Short hash identifying this model's weights (stored in saved memories, checked on load).
        Computed once: the weights of a loaded model do not change."""
        if self._fingerprint is None:
            self._fingerprint = memory_file.model_fingerprint(self.model, self.cfg)
        return self._fingerprint

    def save_memory(self, path, memory: VideoMemory) -> None:
        """Write a video memory (``PrefillResult.video_memory``) to ``path`` (safetensors)."""
        if not isinstance(memory, VideoMemory):
            memory = VideoMemory(memory, np.zeros((0,), np.int32))
        memory_file.save_memory(path, memory.kv, self.cfg, extra={"prompt_ids": [int(i) for i in memory.prompt_ids],
                                                      "frames": memory.frames,
                                                      "visual_tokens": memory.visual_tokens},
                    fingerprint=self.fingerprint())

    def load_memory(self, path) -> VideoMemory:
        """Read a memory written by :meth:`save_memory`; one saved by another model (other geometry, or other
        weights: see :func:`vxl_jax.infer.memory_file.model_fingerprint`) raises ``MemoryMismatchError`` (a ValueError)."""
        kv, extra = memory_file.load_memory(path, self.cfg, dtype=self._dtype, fingerprint=self.fingerprint())
        return VideoMemory(kv, np.asarray(extra.get("prompt_ids", []), np.int32), int(extra.get("frames", 0)),
                           int(extra.get("visual_tokens", 0)))


def _peak_memory_bytes() -> int:
    """Accelerator peak bytes in use when the backend reports it, else the process's peak RSS."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"])
    except Exception:  # pragma: no cover - backend without memory stats
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
