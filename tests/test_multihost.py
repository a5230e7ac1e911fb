"""Multi-host: N processes see the single-process data, and a sharded prefill runs across 2 processes.

* Data (in process, fast): with grain's process sharding faked, the per-process loaders of 2 (or 4)
  processes, their rows put side by side as ``jax.make_array_from_process_local_data`` does, give the
  single-process batches row for row; a loader state saved by process 0 of 2 resumes one process
  (and 4) at the next global batch.
* Prefill (2 subprocesses x 4 fake CPU devices, gloo collectives; ``bench/multihost.py --only
  prefill``, ~40 s of CPU): the embedded model with parameters split across both processes gives
  the single-device logits within 1e-5 and the same greedy ids.
* Training (``bench/multihost.py --only train``: pair, single process, resume of the pair's
  checkpoint in one process; several minutes on 2 cores, so a bench) runs here only with
  ``VXL_MULTIHOST_TRAIN=1``.
"""

import json
import os
import subprocess
import sys

import grain
import numpy as np
import pytest

from vxl_jax.data import pipeline
from vxl_jax.data.pipeline import GlobalOrderSampler, SampleSpec, TrainLoader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, ACCUM = 4, 2  # global rows per micro-batch, micro-batches per step


def _records(n=11):
    return [{"id": f"t{i}", "conversations": [{"from": "human", "value": f"Question {i}?"},
                                              {"from": "gpt", "value": "yes" if i % 2 else "no"}]} for i in range(n)]


SPEC = SampleSpec(max_prefix=8, max_suffix=48, frames_upbound=2, image_size=56)


def _loader(monkeypatch, process, count, state=None):
    options = grain.sharding.ShardOptions(shard_index=process, shard_count=count, drop_remainder=True)
    monkeypatch.setattr(pipeline, "shard_options", lambda: options)
    ld = TrainLoader(_records(), SPEC, BATCH // count, ACCUM, seed=3)
    if state is not None:
        ld.set_state(json.loads(json.dumps(state)))
    return ld


def _global_steps(loaders, n):
    """n steps of ``suffix_ids`` [accum, B, S]: each process's rows after the previous process's."""
    return [np.concatenate([next(ld)["suffix_ids"] for ld in loaders], axis=1) for _ in range(n)]


@pytest.mark.parametrize("count", [2, 4])
def test_processes_read_the_single_process_batches(monkeypatch, count):
    single = _global_steps([_loader(monkeypatch, 0, 1)], 4)
    split = _global_steps([_loader(monkeypatch, p, count) for p in range(count)], 4)
    for a, b in zip(single, split):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(single[0][0, i], single[0][0, 0]) for i in range(BATCH))  # rows differ


def test_state_saved_by_a_pair_resumes_any_process_count(monkeypatch):
    single = _global_steps([_loader(monkeypatch, 0, 1)], 4)
    pair = [_loader(monkeypatch, p, 2) for p in range(2)]
    _global_steps(pair, 2)
    saved = pair[0].get_state()  # what the checkpoint holds: the primary process's state
    assert saved["position"] == 2 * ACCUM * BATCH
    resumed_one = _global_steps([_loader(monkeypatch, 0, 1, saved)], 2)
    resumed_four = _global_steps([_loader(monkeypatch, p, 4, saved) for p in range(4)], 2)
    for want, a, b in zip(single[2:], resumed_one, resumed_four):
        np.testing.assert_array_equal(want, a)
        np.testing.assert_array_equal(want, b)


def test_sampler_is_a_permutation_of_each_global_batch():
    one, two = GlobalOrderSampler(11, 6, 1, seed=1), GlobalOrderSampler(11, 3, 2, seed=1)
    for m in range(5):
        idx = range(m * 6, (m + 1) * 6)
        assert sorted(two.position(i) for i in idx) == list(idx)
        assert [one[i].record_key for i in idx] == [two[(m * 3 + j) * 2 + p].record_key for p in range(2)
                                                    for j in range(3)]
    assert repr(one) == repr(two)  # grain validates a restored state against it: no process count in it


def test_batch_rows_per_process_are_checked():
    """The rows a process must load are those its devices hold; a mismatch is a clear error, not a shape error."""
    from vxl_jax.runtime import sharding as sh
    from vxl_jax.runtime.distributed import check_process_batch, process_rows
    from vxl_jax.train.step import batch_shardings

    mesh = sh.make_mesh((2, 2, 2))
    shard = batch_shardings(mesh, {"x": np.zeros((1, 4, 3))}, "fsdp")["x"]
    assert process_rows(shard, (1, 4, 3), axis=1) == 4  # one process holds every device here
    check_process_batch(shard, (1, 4, 3), 4)
    with pytest.raises(ValueError, match="loads 2 of the 4 batch rows.*places 4 rows"):
        check_process_batch(shard, (1, 4, 3), 2)


def _bench(only, timeout):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "multihost.py"), "--only", only],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"{only}: OK" in r.stdout
    return r.stdout


def test_two_process_sharded_prefill_equals_one_device():
    out = _bench("prefill", timeout=900)
    assert "| fsdp=4,tensor=2 | [0, 1] |" in out


@pytest.mark.skipif(os.environ.get("VXL_MULTIHOST_TRAIN") != "1",
                    reason="minutes on 2 CPU cores: run `python bench/multihost.py` (or set VXL_MULTIHOST_TRAIN=1)")
def test_two_process_training_equals_one_process_and_resumes_in_one():
    _bench("train", timeout=3600)
