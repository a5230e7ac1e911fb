"""The persistent XLA compilation cache, shared by ``infer.py`` and training (a repeated run skips compiles)."""

from __future__ import annotations

import os

import jax


def default_cache_dir() -> str:
    """``$VXL_JAX_CACHE``, else ``$XDG_CACHE_HOME/vxl_jax/xla``, else ``~/.cache/vxl_jax/xla``."""
    if os.environ.get("VXL_JAX_CACHE"):
        return os.environ["VXL_JAX_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vxl_jax", "xla")


def enable_compilation_cache(path: str | None = None, min_compile_time_s: float = 0.0) -> str | None:
    """Persist compiled XLA programs under ``path`` (default :func:`default_cache_dir`).

    Returns the directory, or None when disabled: ``path`` is ``"none"``, ``JAX_COMPILATION_CACHE_DIR``
    already chose one (JAX uses that), or the directory cannot be created (raises nothing: a cache is
    an optimisation). Programs that compile faster than ``min_compile_time_s`` are not stored.
    """
    path = default_cache_dir() if path is None else path
    if not path or path.lower() == "none" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
