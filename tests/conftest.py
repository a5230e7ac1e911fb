"""Test setup: CPU only, 8 fake devices (for mesh tests), no hub access. Runs before jax is imported."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _golden_dir() -> pathlib.Path | None:
    env = os.environ.get("VXL_GOLDEN_DIR")
    candidates = [pathlib.Path(env)] if env else []
    candidates += [ROOT.parent / "shared" / "golden", ROOT / "shared" / "golden"]
    for c in candidates:
        if (c / "tiny_videoxl" / "model.safetensors").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    d = _golden_dir()
    if d is None:
        message = "golden data (../shared/golden) not found; set VXL_GOLDEN_DIR"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run the golden parity tests)")
        pytest.skip(message)
    return d


@pytest.fixture(scope="session")
def tiny_cfg():
    from vxl_jax.config import VideoXLConfig

    return VideoXLConfig.from_yaml(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def vx(tiny_cfg):
    """A tiny random VideoXL (fresh per test module: its ratio RNG and compile cache are not shared)."""
    from vxl_jax.api import VideoXL
    from vxl_jax.model import random_model

    return VideoXL(tiny_cfg, random_model(tiny_cfg, seed=11, std=0.2))


@pytest.fixture(scope="module")
def prompt():
    """Token ids with one video placeholder (6 before, 5 after) and 3 preprocessed float frames."""
    import numpy as np

    rng = np.random.default_rng(0)
    ids = np.concatenate([rng.integers(3, 500, 6), [-200], rng.integers(3, 500, 5)])
    pixels = rng.normal(size=(3, 3, 336, 336)).astype(np.float32)
    return ids, pixels
