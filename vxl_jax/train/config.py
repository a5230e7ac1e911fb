"""The training sections of a preset (``train:`` / ``data:`` / ``checkpoint:``; strict: unknown keys raise
ConfigError) and :func:`load_run_config`, the one builder of a training run's whole configuration."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from vxl_jax.config import ConfigError, VideoXLConfig, build, load_yaml_sections

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


def from_sections(sections: Mapping[str, Any]) -> tuple[TrainConfig, DataConfig, CheckpointConfig]:
    """The ``train`` / ``data`` / ``checkpoint`` sections of a preset dict, each by the one strict builder."""
    return (build(TrainConfig, sections.get("train"), "train"), build(DataConfig, sections.get("data"), "data"),
            build(CheckpointConfig, sections.get("checkpoint"), "checkpoint"))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A resolved training preset: the model config (its ``runtime`` included), the ``train`` / ``data`` /
    ``checkpoint`` sections, and the ratios drawn per window (``train.ratios`` or ``model.beacon.ratios``)."""

    model: VideoXLConfig
    train: TrainConfig
    data: DataConfig
    checkpoint: CheckpointConfig
    ratios: tuple[int, ...]


def load_run_config(path, overrides: list[str] | None = None) -> RunConfig:
    """The one builder of a training run's configuration: preset YAML + ``key=value`` overrides -> RunConfig."""
    sections = load_yaml_sections(path, overrides)
    cfg = VideoXLConfig.from_dict(sections["model"])
    tcfg, dcfg, ccfg = from_sections(sections)
    ratios = tuple(tcfg.ratios) or tuple(cfg.beacon.ratios)
    for r in ratios:
        cfg.beacon.check_ratio(r)
    if tcfg.eval_ratio not in ratios:
        raise ConfigError(f"train.eval_ratio {tcfg.eval_ratio} is not one of the training ratios {list(ratios)}")
    return RunConfig(cfg, tcfg, dcfg, ccfg, ratios)
