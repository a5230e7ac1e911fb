"""Short CI version of bench/memory_task.py: training through the beacon memory lowers the loss on
long (3-window) synthetic videos, and the scorer runs with and without the memory."""

import jax
import pytest


CACHE_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture
def xla_cache(tmp_path, monkeypatch):
    """train.loop.run turns on a persistent XLA cache at $VXL_JAX_CACHE (here: not the user's); the test
    run's own cache settings (tests/conftest.py) come back afterwards."""
    monkeypatch.setenv("VXL_JAX_CACHE", str(tmp_path / "xla"))
    before = {name: jax.config.values[name] for name in CACHE_SETTINGS}
    yield
    for name, value in before.items():
        jax.config.update(name, value)


def test_memory_task_loss_falls(tmp_path, xla_cache):
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "memory_task.py")
    spec = importlib.util.spec_from_file_location("memory_task", path)
    mt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mt)

    res = mt.main(["--steps", "16", "--batch", "4", "--n-train", "16", "--n-eval", "4", "--lr", "3e-3",
                   "--workdir", str(tmp_path / "mt")])
    assert res["loss_last"] < res["loss_first"] - 1.0, res
    assert 0.0 <= res["acc_memory"] <= 1.0 and 0.0 <= res["acc_memory_cut"] <= 1.0 and res["n_eval"] == 4
