"""``VideoXL``: the facade over the batched inference core (:mod:`vxl_jax.infer.core`).

    vx = VideoXL.load("converted_dir", dtype="bfloat16")
    res = vx.prefill(input_ids, pixel_values, ratio=8)      # .logits [S, vocab] fp32, .memory
    new_ids = vx.generate(input_ids, pixel_values, ratio=8, max_new_tokens=64)
    logits = vx.score(text_ids, memory=res.video_memory)    # every position of a text over a saved memory

``input_ids`` are 1-D token ids with exactly one ``-200`` placeholder where the video goes (or none: text
only). ``pixel_values`` are preprocessed float32 frames [F, 3, 336, 336], or raw uint8 frames [F, H, W, 3]
(resized and cropped on the host per scan call, sent to the device as uint8 and normalized there).
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Any, Literal, Mapping, Sequence, overload

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vxl_jax.beacon.memory import KVMemory, drop_text
from vxl_jax.beacon.ratios import ORIGINAL_RATIO_SEED
from vxl_jax.config import VideoXLConfig
from vxl_jax.convert import fingerprint
from vxl_jax.convert.folder import load_converted
from vxl_jax.infer import memory_file
from vxl_jax.infer.core import DECODE_CHUNK, InferenceCore, Row, is_batch, rows_of_call, video_input
from vxl_jax.infer.reports import Clock, TokenProgress
from vxl_jax.infer.results import GenerateOutput, PrefillResult, VideoMemory, split_prompt
from vxl_jax.infer.sampling import SamplingParams
from vxl_jax.infer.session import Session, check_finite, load, start
from vxl_jax.media.preprocess import preprocess_frames
from vxl_jax.runtime.sharding import INFERENCE_PRESET, inference_mesh


class VideoXL:
    """A loaded Video-XL: config, parameters (in ``core.engine``), tokenizer and generation defaults.

    State a caller can see (and nothing else changes between calls): ``ratio_rng``, the "step-random" ratio
    generator (a list of ratios draws each window's ratio from it; seeded with the original's
    ``default_rng(42)`` on load, continuing across calls as the original's does; ``ratio_rng=`` on a call draws
    from yours instead; :meth:`reset_ratio_rng`), and ``stats``, the read-only report of the last call (each
    call also returns its own: ``PrefillResult.stats``, ``GenerateOutput.prompt`` / ``.decode``).
    """

    def __init__(self, cfg: VideoXLConfig, model, tokenizer: Any = None, generation_config: dict | None = None,
                 mesh=None):
        """``mesh``: None (one device), axis sizes over ``data`` / ``fsdp`` / ``tensor`` (``{"tensor": 4}`` or
        ``"tensor=4"``) or a ``jax.sharding.Mesh``: parameters placed once by the ``inference`` rules."""
        self.cfg, self.tokenizer = cfg, tokenizer
        self.generation_config = dict(generation_config or {})
        self.mesh = inference_mesh(mesh)
        self.core = InferenceCore(model, mesh=self.mesh)
        self.model = nnx.merge(self.core.engine.graphdef, self.core.engine.state)  # the placed parameters
        self.ratio_rng = np.random.default_rng(ORIGINAL_RATIO_SEED)
        self._last: Mapping[str, Any] = MappingProxyType({})
        self._fingerprint: str | None = None
        self._folder: str | None = None  # the converted folder it was loaded from (its stored fingerprint)

    @classmethod
    def load(cls, path, dtype: str = "float32", mesh=None) -> "VideoXL":
        """A folder written by ``convert_weights.py`` (config, params restored onto their shards, tokenizer)."""
        mesh = inference_mesh(mesh)
        cfg, model, tokenizer, gen = load_converted(path, dtype=dtype, mesh=mesh, rules=INFERENCE_PRESET)
        vx = cls(cfg, model, tokenizer, gen, mesh=mesh)
        vx._folder = os.path.abspath(os.fspath(path))
        return vx

    @property
    def engine(self):
        return self.core.engine

    @property
    def stats(self) -> Mapping[str, Any]:
        return self._last

    def reset_ratio_rng(self, seed: int = ORIGINAL_RATIO_SEED) -> None:
        self.ratio_rng = np.random.default_rng(seed)

    def image_features(self, pixel_values) -> np.ndarray:
        """Anyres image views [1 + T, 3, S, S] -> [144 T, D] (base view dropped, tiles pooled); a single view
        [1, 3, S, S] -> its 576 unpooled projector rows (docs/algorithm.md §1)."""
        px = video_input(self.cfg, pixel_values).data
        px = preprocess_frames(px, size=self.cfg.vision.image_size) if px.dtype == np.uint8 else px
        if px.shape[0] == 1:
            return np.asarray(self.engine.features(jnp.asarray(px), pooled=False))[0]
        f = np.asarray(self.engine.features(jnp.asarray(px[1:]), pooled=True))
        return f.reshape(-1, f.shape[-1])

    def prefill(self, input_ids, pixel_values=None, ratio: int | Sequence[int] | None = None, *, features=None,
                extra_slots: int = 0, progress: bool = False, keep_memory: bool = True,
                ratio_rng: np.random.Generator | None = None) -> PrefillResult:
        """The prompt -> logits of the text after the video and the compressed memory (``video_memory``: after
        the video only, to ask again). ``ratio``: an int (default 8) or a list (step-random, drawn from
        ``ratio_rng`` or ``self.ratio_rng``); ``features``: visual tokens [N, D] instead of frames;
        ``extra_slots``: memory room to reserve; ``keep_memory=False`` drops every beacon (ablation)."""
        clock = Clock(self.engine)
        check_finite(pixel_values)
        check_finite(features, "features")
        row = Row.from_prompt(input_ids, video_input(self.cfg, pixel_values, features))
        p = self.core.prompt([row], ratio, rng=self._rng(ratio_rng), room=extra_slots, keep=keep_memory,
                             progress=progress)
        video = None
        if row.video is not None:
            video = VideoMemory(drop_text(p.memory, len(row.text)), row.prefix, row.video.frames,
                                row.video.num_visual(self.cfg.beacon))
        stats = self._report(clock.report(row, p.memory))
        return PrefillResult(p.row_logits(0), p.memory, video, p.ratios if video else (), stats=stats)

    def score(self, text_ids, memory: VideoMemory | KVMemory | Sequence | None = None):
        """fp32 logits [n, V] of every position of ``text_ids`` over ``memory`` (a saved video memory; None:
        the text alone). Lists: B texts over one memory or B memories, in one batched call -> B arrays."""
        single = not is_batch(text_ids)
        rows = rows_of_call(self.cfg, text_ids if not single else [text_ids], None, memory)
        p = self.core.prompt(rows)
        out = [p.row_logits(b) for b in range(len(rows))]
        return out[0] if single else out

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
        for tok in ("<|im_end|>", "<|endoftext|>") if self.tokenizer is not None else ():
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid >= 0 and tid != getattr(self.tokenizer, "unk_token_id", None):
                ids.add(tid)
        return ids

    @overload
    def generate(self, input_ids, pixel_values=..., ratio=..., max_new_tokens=..., *,
                 return_output: Literal[True], **kwargs) -> GenerateOutput: ...

    @overload
    def generate(self, input_ids, pixel_values=..., ratio=..., max_new_tokens=..., *, return_logits: Literal[True],
                 **kwargs) -> tuple[np.ndarray | list[np.ndarray], np.ndarray | list[np.ndarray]]: ...

    @overload
    def generate(self, input_ids, pixel_values=..., ratio=..., max_new_tokens=..., **kwargs
                 ) -> np.ndarray | list[np.ndarray]: ...

    def generate(self, input_ids, pixel_values=None, ratio=None, max_new_tokens: int | None = None, *,
                 do_sample=None, temperature=None, top_k=None, top_p=None, repetition_penalty=None, seed=0,
                 memory=None, stop_ids=None, features=None, progress: bool = False, return_logits: bool = False,
                 stream=None, chunk: int = DECODE_CHUNK, return_output: bool = False,
                 ratio_rng: np.random.Generator | None = None):
        """New token ids (int32 1-D, the stop token included if reached), decoded on device ``chunk`` tokens per
        compiled call; ``stream(new_ids)`` is called as they arrive; ``seed`` seeds the draws.

        ``memory``: a saved video memory; ``input_ids`` are then the text after the video (nothing re-encoded).
        Lists: B prompts (``pixel_values`` None or B entries, ``memory`` one or B, ``seed`` an int or B) -> B id
        arrays, each equal to its single call. Returns the ids (a list for lists); with ``return_logits`` also
        the fp32 [n, V] logits each token was chosen from; with ``return_output`` a :class:`GenerateOutput`.
        """
        clock = Clock(self.engine)
        single = not (is_batch(input_ids) or isinstance(memory, (list, tuple)))
        if not single and (features is not None or stream is not None):
            raise ValueError("features= and stream= take one prompt; call generate once per prompt for them")
        check_finite(pixel_values)
        check_finite(features, "features")
        rows = rows_of_call(self.cfg, [input_ids] if single else input_ids, [pixel_values] if single else pixel_values, memory,
                          features)
        max_new = int(max_new_tokens if max_new_tokens is not None else self.generation_config.get("max_new_tokens", 64))
        if max_new < 1:
            raise ValueError("max_new_tokens must be >= 1")
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [int(seed)] * len(rows)
        if len(seeds) != len(rows):
            raise ValueError(f"{len(seeds)} seeds for {len(rows)} prompts")
        params = self.sampling_params(do_sample, temperature, top_k, top_p, repetition_penalty)
        p = self.core.prompt(rows, ratio, rng=self._rng(ratio_rng), room=max_new, progress=progress)
        prompt = clock.report(rows[0], p.memory) if single else clock.batch_report(len(rows))
        clock = Clock(self.engine)
        bar = TokenProgress(max_new, progress and stream is None)
        ids, logits, mem = self.core.decode(
            p.memory, p.last(), [r.seen for r in rows], params=params, max_new=max_new, seeds=seeds, chunk=chunk,
            stops=set(stop_ids) if stop_ids is not None else self.stop_ids(), return_logits=return_logits,
            on_chunk=bar.chained(None if stream is None else (lambda new: stream(new[0]))))
        bar.close()
        out = GenerateOutput(ids[0] if single else ids, mem, prompt, clock.decode_report(ids, mem, single),
                             (logits[0] if single else logits) if return_logits else None)
        self._report(out.stats)
        if return_output:
            return out
        return (out.ids, out.step_logits) if return_logits else out.ids

    def _rng(self, rng):
        return self.ratio_rng if rng is None else rng

    def _report(self, report) -> Mapping[str, Any]:
        self._last = MappingProxyType(dict(report))
        return self._last

    # ------------------------------------------------------------------ sessions and memory files

    def session(self, prefix_ids=None, ratio: int | Sequence[int] | None = None, *, seed: int = 42) -> Session:
        """A :class:`~vxl_jax.infer.session.Session` (frames added a few at a time, questions at any point);
        a list ``ratio`` draws per window from the session's own ``default_rng(seed)``."""
        return Session(self, start(self.core, prefix_ids, ratio, seed))

    def load_session(self, path, ratio: int | Sequence[int] | None = None) -> Session:
        """A session saved by ``Session.save`` (or one continuing a memory saved by :meth:`save_memory`)."""
        return Session(self, load(self.core, path, self.fingerprint(), ratio))

    def fingerprint(self) -> str:
        """The whole-model fingerprint (32 hex digits; :mod:`vxl_jax.convert.fingerprint`): a hash of every
        parameter as stored, in the converted folder it was loaded from (so a float32 and a bfloat16 load of one
        folder agree), else in memory. Stored in saved memories and sessions, checked when they are loaded."""
        if self._fingerprint is None:
            self._fingerprint = (fingerprint.of_model(self.model) if self._folder is None
                                 else fingerprint.folder_fingerprint(self._folder, self.cfg))
        return self._fingerprint

    def save_memory(self, path, memory: VideoMemory | KVMemory) -> None:
        """Write a video memory (``PrefillResult.video_memory``) to ``path`` (safetensors)."""
        memory_file.save_video_memory(path, memory, self.cfg, self.fingerprint())

    def load_memory(self, path) -> VideoMemory:
        """Read :meth:`save_memory`'s file; one made by another model raises ``MemoryMismatchError``."""
        return memory_file.load_video_memory(path, self.cfg, self.core.dtype, self.fingerprint())


__all__ = ["VideoXL", "VideoMemory", "PrefillResult", "GenerateOutput", "split_prompt"]
