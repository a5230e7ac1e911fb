"""YAML presets (``configs/*.yaml``): sections and ``a.b.c=value`` overrides, as plain dicts."""

from __future__ import annotations

import os

import yaml

from vxl_jax.config.errors import ConfigError


def apply_overrides(d: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = yaml.safe_load(raw)
    return d


def load_yaml_sections(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Read a preset -> ``{section: dict}``. Top-level keys: ``model`` (defaults when absent) and the optional
    training sections ``train`` / ``data`` / ``checkpoint`` (:func:`vxl_jax.train.config.load_run_config`)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        d = yaml.safe_load(f) or {}
    apply_overrides(d, overrides)
    if "infer" in d:
        raise ConfigError(f"{path}: the 'infer' section is not read by anything and is no longer accepted; "
                          "infer.py takes its settings from the command line (see python infer.py --help)")
    allowed = {"model", "train", "data", "checkpoint"}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level section(s) {unknown}; allowed: {sorted(allowed)}")
    d.setdefault("model", {})
    return d
