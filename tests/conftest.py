"""Test setup: CPU only, 8 fake devices (for mesh tests), no hub access. Runs before jax is imported."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402

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


# --- one persistent XLA compilation cache for the run --------------------------------------------------
# Many modules compile the same programs (the tiny model's prefill / decode steps at the same shapes, each on a
# fresh VideoXL); with JAX's persistent cache the second module reads them from disk instead of recompiling.
# The directory is per Python and jax version (CI's two legs run side by side), under .pytest_cache/ (git
# ignores it). VXL_TEST_XLA_CACHE=DIR puts it elsewhere, =none turns it off; JAX_COMPILATION_CACHE_DIR wins.
XLA_CACHE_MIN_COMPILE_S = 0.2  # programs that compile faster than this are not worth a disk entry


def xla_cache_dir() -> str:
    """The directory of the run's persistent XLA cache (see above), or 'none'."""
    import jax

    env = os.environ.get("VXL_TEST_XLA_CACHE")
    if env:
        return env
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-jax{jax.__version__}"
    return str(ROOT / ".pytest_cache" / "xla" / tag)


def pytest_configure(config):
    from vxl_jax.runtime.compile_cache import enable_compilation_cache

    enable_compilation_cache(xla_cache_dir(), min_compile_time_s=XLA_CACHE_MIN_COMPILE_S)


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
def golden_converted(golden_dir, tmp_path_factory):
    """The golden checkpoint converted once for the whole run -> (folder, the converter's summary). No dtype is
    given: the converter keeps the checkpoint's float32 (checked), which is what every module loads."""
    from vxl_jax.convert import convert

    out = tmp_path_factory.mktemp("golden") / "converted"
    summary = convert(str(golden_dir / "tiny_videoxl"), str(out), progress=False)
    assert summary["dtype"] == "float32", summary["dtype"]
    return out, summary


@pytest.fixture(scope="session")
def golden_vx(golden_converted):
    """The converted golden checkpoint loaded in float32, shared by the modules that only read it (fixed ratios:
    its ratio RNG is never drawn; its compiled steps are reused across modules)."""
    from vxl_jax.infer.api import VideoXL

    return VideoXL.load(golden_converted[0], dtype="float32")


@pytest.fixture(scope="session")
def tiny_cfg():
    from vxl_jax.config import VideoXLConfig

    return VideoXLConfig.from_yaml(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="session")
def demo_vx():
    """The embedded default model (``vxl_jax.infer.demo.default_model()``), built and compiled once for the run,
    for tests that only ask it at fixed ratios or read its weights. A test that draws step-random ratios, changes
    the weights or inspects the compiled programs builds its own."""
    from vxl_jax.infer.demo import default_model

    return default_model()


@pytest.fixture(scope="module")
def vx(tiny_cfg):
    """A tiny random VideoXL (fresh per test module: its ratio RNG and compile cache are not shared)."""
    from vxl_jax.infer.api import VideoXL
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


# --- the `torch` marker -------------------------------------------------------------------------------
# A test module that imports torch (directly or through tests/torch_ref.py) gets the `torch` marker on
# every test. Without torch installed (the base / [test] install, CI's Python 3.12 leg) such modules are
# not even imported when `-m "not torch"` deselects them; if they are selected, the run stops with a
# usage error instead of skipping them silently.
_IMPORTS = re.compile(r"^\s*(?:import|from)\s+([\w.]+)", re.M)


def _imports_torch(path: pathlib.Path, seen: frozenset = frozenset()) -> bool:
    """``path`` imports torch, or a helper module of tests/ (e.g. torch_ref, hf_sampling) that does."""
    for name in _IMPORTS.findall(path.read_text()):
        if name.split(".")[0] == "torch":
            return True
        helper = ROOT / "tests" / (name.removeprefix("tests.").split(".")[0] + ".py")
        if helper.is_file() and helper != path and helper not in seen and _imports_torch(helper, seen | {path}):
            return True
    return False


def _module_needs_torch(path: pathlib.Path) -> bool:
    return path.suffix == ".py" and path.name.startswith("test_") and _imports_torch(path)


def _torch_deselected(config) -> bool:
    """True when the -m expression rejects every test marked `torch` (whatever other markers it has)."""
    expr = config.getoption("markexpr", "")
    if not expr:
        return False
    from _pytest.mark.expression import Expression

    others = [m.split(":")[0].strip() for m in config.getini("markers")]
    others = [m for m in others if m and m != "torch"]
    compiled = Expression.compile(expr)
    for k in range(1 << len(others)):
        marks = {"torch"} | {m for i, m in enumerate(others) if k >> i & 1}
        if compiled.evaluate(lambda name, /, **kw: not kw and name in marks):
            return False
    return True


def _torch_missing(path: pathlib.Path) -> bool:
    return _module_needs_torch(path) and importlib.util.find_spec("torch") is None


def pytest_ignore_collect(collection_path, config):
    if _torch_missing(collection_path) and _torch_deselected(config):
        return True  # never imported: its tests would be deselected anyway
    return None


def pytest_collectstart(collector):
    if isinstance(collector, pytest.Module) and _torch_missing(collector.path):
        raise pytest.UsageError(f"{collector.path.name} needs torch, which is not installed: "
                                "pip install -e '.[dev]', or run only the torch-free tests with -m 'not torch'")


# --- the split over CI's two legs -------------------------------------------------------------------------
# `.ci/run` runs two legs side by side on 2 cores, so its wall time is the longer leg's. The fidelity core (golden
# cases, the API, sessions, saved memories, evaluation, the server over HTTP, bad input) runs in both legs, on both
# version sets; each heavy module below runs in one leg only, chosen to balance the legs' times. `first_leg`: the
# Python 3.11 leg only (with the modules needing torch and the tests marked `slow`); `second_leg`: the Python 3.12
# leg only (newest jax / flax). A test marked `slow` inside a `second_leg` module stays in the first leg.
ONE_LEG = {
    "first_leg": ("test_train_resume", "test_train_sharding", "test_readme", "test_atomic_io", "test_lean_backward",
                  "test_eval_suite"),
    "second_leg": ("test_pallas_attention", "test_sharded_inference", "test_batched", "test_train_memory",
                   "test_infer_cli", "test_runtime_switches", "test_serve_scheduler", "test_compression_reference",
                   "test_blocked_attention", "test_sharding", "test_multihost"),
}
_LEG_OF = {module: leg for leg, modules in ONE_LEG.items() for module in modules}
_unknown = sorted(m for m in _LEG_OF if not (ROOT / "tests" / f"{m}.py").is_file())
assert not _unknown, f"ONE_LEG names test modules that do not exist: {_unknown}"


def _leg_marker(item, needs_torch: bool):
    """The one-leg marker the table above gives ``item``, or None (both legs)."""
    leg = _LEG_OF.get(item.path.stem)
    if leg == "second_leg" and (needs_torch or item.get_closest_marker("slow")):
        return None
    return getattr(pytest.mark, leg) if leg else None


def pytest_collection_modifyitems(config, items):
    needs = {}
    for item in items:
        path = item.path
        if path not in needs:
            needs[path] = _module_needs_torch(path)
        if needs[path]:
            item.add_marker(pytest.mark.torch)
        marker = _leg_marker(item, needs[path])
        if marker is not None:
            item.add_marker(marker)
        if item.get_closest_marker("first_leg") and item.get_closest_marker("second_leg"):
            raise pytest.UsageError(f"{item.nodeid} is marked first_leg and second_leg: no CI leg would run it")
        # CI's 3.11 leg skips `second_leg`, its 3.12 leg skips `slow` and `torch`: a test with both would run in none
        if item.get_closest_marker("second_leg") and (item.get_closest_marker("slow") or needs[path]):
            raise pytest.UsageError(f"{item.nodeid} is marked second_leg and slow or torch: no CI leg would run it")
