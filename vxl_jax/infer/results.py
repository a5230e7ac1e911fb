"""What the inference API returns and keeps: the video memory, prefill and generate result types, and the
prompt split around the video placeholder."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from vxl_jax.text.constants import IMAGE_TOKEN_INDEX
from vxl_jax.beacon.memory import KVMemory

@dataclasses.dataclass
class VideoMemory:
    """The reusable compressed memory of one video: ``[prefix || beacons]`` plus what produced it."""

    kv: KVMemory
    prompt_ids: np.ndarray  # text ids before the video (the repetition penalty sees them too)
    frames: int = 0
    visual_tokens: int = 0

    @property
    def sizes(self) -> dict:
        return self.kv.host_sizes()


@dataclasses.dataclass
class PrefillResult:
    logits: np.ndarray  # float32 [S, vocab]: the S text tokens after the video (every token if text-only)
    memory: KVMemory  # after the whole prompt: [prefix || beacons || text]
    video_memory: VideoMemory | None = None  # after the visual span only: reuse it for new questions
    ratios: tuple[int, ...] = ()  # the ratio used for each window
    stats: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))  # read-only report

    @property
    def sizes(self) -> dict:
        return self.memory.host_sizes()


@dataclasses.dataclass(frozen=True)
class GenerateOutput:
    """Everything one ``VideoXL.generate(..., return_output=True)`` call produced.

    ids: int32 [n] new ids (a list of B arrays for a batched call); step_logits: fp32 [n, V] (a list for a
    batch) when ``return_logits``, else None; memory: the KV memory after generation (prompt + the generated
    tokens fed back); prompt: report of the prompt stage (prefill, or the text over a given memory);
    decode: report of the decoding stage (``generated``, ``decode_compile_s``, ``decode_run_s``, ``kept_kv``,
    ``peak_mem_bytes``). Both reports are read-only mappings.
    """

    ids: Any
    memory: KVMemory
    prompt: Mapping[str, Any]
    decode: Mapping[str, Any]
    step_logits: Any = None

    @property
    def stats(self) -> Mapping[str, Any]:
        """The two reports merged (decode's keys win): what ``VideoXL.stats`` shows after the call."""
        return MappingProxyType({**self.prompt, **self.decode})


def split_prompt(input_ids) -> tuple[np.ndarray, np.ndarray | None]:
    """1-D ids -> (prefix, suffix) around the single -200 placeholder, or (ids, None) if there is none."""
    ids = np.asarray(input_ids)
    if ids.ndim != 1:
        raise ValueError(f"input_ids must be 1-D token ids, got shape {ids.shape}")
    where = np.flatnonzero(ids == IMAGE_TOKEN_INDEX)
    if len(where) > 1:
        raise ValueError(f"input_ids contain {len(where)} video placeholders (-200); exactly one is supported")
    if np.any((ids < 0) & (ids != IMAGE_TOKEN_INDEX)):
        raise ValueError("input_ids contain negative ids other than the -200 placeholder")
    if not len(where):
        return ids.astype(np.int32), None
    p = int(where[0])
    return ids[:p].astype(np.int32), ids[p + 1:].astype(np.int32)
