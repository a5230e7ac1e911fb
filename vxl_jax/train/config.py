"""``train:`` / ``data:`` / ``checkpoint:`` sections of a preset (strict: unknown keys raise ConfigError)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from vxl_jax.config import ConfigError

TRAINABLE = ("all", "projector", "projector+lm", "lm")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation. ``batch_size`` is the global batch per micro-step; one optimizer step sees
    ``batch_size * accum`` records. ``trainable``: ``all`` (stage 2), ``projector`` (stage 1),
    ``projector+lm``, ``lm``; ``freeze_vision`` additionally freezes CLIP. ``ratios``: per-window
    compression ratios drawn uniformly (empty = ``model.beacon.ratios``). ``init_std``: std of the random init
    (when not starting from ``checkpoint.init_from``)."""

    steps: int = 20
    batch_size: int = 2
    accum: int = 1
    lr: float = 1e-3
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0
    trainable: str = "all"
    freeze_vision: bool = False
    ratios: tuple[int, ...] = ()
    eval_ratio: int = 8
    seed: int = 0
    init_std: float = 0.02
    log_every: int = 1
    eval_every: int = 10
    eval_batches: int = 2
    workdir: str = "runs/tiny"
    keep_memory: bool = True
    progress: bool = True

    def validate(self):
        if self.steps < 1 or self.batch_size < 1 or self.accum < 1:
            raise ConfigError("train.steps, train.batch_size and train.accum must be >= 1")
        if self.trainable not in TRAINABLE:
            raise ConfigError(f"train.trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``train``: a .json/.jsonl record file, or ``synthetic`` (written under ``synthetic_dir``,
    default ``<workdir>/synthetic_data``). ``eval``: a record file, ``synthetic`` or null."""

    train: str = "synthetic"
    eval: str | None = "synthetic"
    video_folder: str = ""
    image_folder: str = ""
    synthetic_dir: str | None = None
    synthetic_train: int = 16
    synthetic_eval: int = 8
    max_prefix: int = 32
    max_suffix: int = 64
    frames_upbound: int = 20
    video_fps: float = 1.0
    tokenizer: str = "tiny"
    workers: int = 0

    def validate(self):
        if self.max_prefix < 1 or self.max_suffix < 2 or self.frames_upbound < 1:
            raise ConfigError("data.max_prefix, data.max_suffix (>= 2) and data.frames_upbound must be positive")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints in ``dir`` (default ``<workdir>/checkpoints``) every ``every`` steps and on
    SIGTERM, ``keep`` newest kept; ``resume`` continues from the latest. ``export`` writes the final
    model as a converted folder (``<workdir>/export``, loadable by infer.py). ``init_from``: start
    from a converted folder instead of random weights."""

    dir: str | None = None
    every: int = 10
    keep: int = 3
    resume: bool = True
    export: bool = True
    init_from: str | None = None


def _build(cls, d: Mapping[str, Any] | None, where: str):
    d = dict(d or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kw = {}
    for k, v in d.items():
        default = names[k].default
        if isinstance(default, tuple):
            v = tuple(int(x) for x in (v or ()))
        elif isinstance(default, bool):
            if not isinstance(v, bool):
                raise ConfigError(f"{where}.{k} must be true/false, got {v!r}")
        elif isinstance(default, int) and not isinstance(default, bool):
            if isinstance(v, bool) or int(v) != v:
                raise ConfigError(f"{where}.{k} must be an integer, got {v!r}")
            v = int(v)
        elif isinstance(default, float):
            v = float(v)
        kw[k] = v
    out = cls(**kw)
    if hasattr(out, "validate"):
        out.validate()
    return out


def from_sections(sections: Mapping[str, Any]) -> tuple[TrainConfig, DataConfig, CheckpointConfig]:
    return (_build(TrainConfig, sections.get("train"), "train"), _build(DataConfig, sections.get("data"), "data"),
            _build(CheckpointConfig, sections.get("checkpoint"), "checkpoint"))
