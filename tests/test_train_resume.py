"""Checkpoint/resume through the real CLI: N steps straight == k steps, SIGKILL, resume to N (same
losses step by step, same final parameters); SIGTERM checkpoints and stops; a checkpoint restores
onto a different mesh. Subprocesses share a persistent XLA cache, so only the first one compiles."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, K = 6, 3


def cli(workdir, data_dir, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs/train_tiny.yaml"),
            f"train.workdir={workdir}", f"data.synthetic_dir={data_dir}", "data.synthetic_train=8",
            "data.synthetic_eval=2", "data.eval=null", "train.eval_every=0", f"train.steps={N}",
            f"checkpoint.every={K}", "train.progress=false", "model.runtime.mesh.fsdp=4", "model.runtime.mesh.tensor=2",
            "data.frames_upbound=12", *extra]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ, VXL_JAX_CACHE=str(tmp_path_factory.mktemp("xla_cache")))
    return e


def metrics(workdir):
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if "loss" in m:
                out[m["step"]] = m  # a resumed run overwrites the killed run's entries
    return out


def params(export):
    from flax import nnx

    from vxl_jax.convert.folder import load_converted

    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(load_converted(export)[1], nnx.Param)))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, env):
    base = tmp_path_factory.mktemp("resume")
    data = base / "data"
    r = subprocess.run(cli(base / "straight", data), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return base, data


def test_kill_and_resume_matches_straight_run(straight, env):
    base, data = straight
    work = base / "killed"
    ckpt = work / "checkpoints"
    p = subprocess.Popen(cli(work, data), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (ckpt / str(K)).is_dir():
        assert p.poll() is None, f"training exited before the step-{K} checkpoint: {p.stderr.read()[-3000:]}"
        assert time.time() - t0 < 300, "no checkpoint after 300 s"
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (ckpt / str(N)).is_dir(), "the run finished before it was killed: the test did not interrupt it"
    assert not (work / "export").exists()
    r = subprocess.run(cli(work, data), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"steps {K}->{N}" in r.stdout
    a, b = metrics(base / "straight"), metrics(work)
    assert sorted(a) == sorted(b) == list(range(1, N + 1))
    for s in range(1, N + 1):
        assert a[s]["loss"] == b[s]["loss"], (s, a[s]["loss"], b[s]["loss"])
        assert a[s]["grad_norm"] == b[s]["grad_norm"]
    pa, pb = params(base / "straight" / "export"), params(work / "export")
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_sigterm_checkpoints_and_stops(straight, env):
    base, data = straight
    work = base / "term"
    p = subprocess.Popen(cli(work, data, "train.steps=1000", "checkpoint.every=1000"), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (work / "metrics.jsonl").exists() or len(metrics(work)) < 2:
        assert p.poll() is None, p.stderr.read()[-3000:]
        assert time.time() - t0 < 300
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    steps = sorted(int(d) for d in os.listdir(work / "checkpoints") if d.isdigit())
    assert len(steps) == 1 and 2 <= steps[0] < 1000 and max(metrics(work)) == steps[0]
    assert "SIGTERM" in out


def test_restore_onto_another_mesh(straight):
    """The step-N checkpoint (saved on fsdp=4 x tensor=2) restores onto fsdp=8 and onto one device."""
    from vxl_jax.runtime import sharding as sh
    from vxl_jax.config import VideoXLConfig
    from vxl_jax.model import random_model
    from vxl_jax.train import optim
    from vxl_jax.train import step as st
    from vxl_jax.train.checkpointing import Checkpoints
    from vxl_jax.train.config import TrainConfig

    base, _ = straight
    cfg = VideoXLConfig.from_yaml(os.path.join(ROOT, "configs/train_tiny.yaml"))
    tx = optim.make_optimizer(TrainConfig(steps=30, lr=3e-3, warmup_ratio=0.1))
    ref = params(base / "straight" / "export")
    for shape in [(1, 8, 1), (1, 1, 1)]:
        mesh = sh.make_mesh(shape, jax.devices()[: int(np.prod(shape))])
        _, state, shd = st.init_state(random_model(cfg, 9), tx, optim.trainable_filter("all"), mesh, 0)
        ck = Checkpoints(str(base / "straight" / "checkpoints"))
        restored, data_state, step = ck.restore(st.abstract_state(state))
        ck.close()
        assert step == N and json.loads(data_state["grain"])["last_seen_indices"]
        assert int(restored["step"]) == N
        from flax import nnx

        got = jax.tree.map(np.asarray, nnx.to_pure_dict(restored["params"]))
        for x, y in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
            np.testing.assert_array_equal(x, y)
        for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(shd)):
            assert leaf.sharding.is_equivalent_to(want, leaf.ndim)


def test_rerunning_a_finished_run_changes_nothing(straight, env):
    """The same command again: 'already finished', no nan loss, no training, the export untouched; --re-export
    writes the export again (same parameters)."""
    base, data = straight
    work = base / "straight"
    marker = work / "export" / "vxl_config.json"
    before = (os.stat(marker).st_mtime_ns, os.stat(marker).st_ino, open(work / "metrics.jsonl").read())
    r = subprocess.run(cli(work, data), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "already finished" in r.stdout and f"step {N}, train.steps={N}" in r.stdout, r.stdout
    assert "nan" not in r.stdout and "exported" not in r.stdout and f"steps {N}->{N}" not in r.stdout
    assert "--re-export" in r.stdout and "train.steps=" in r.stdout
    assert (os.stat(marker).st_mtime_ns, os.stat(marker).st_ino, open(work / "metrics.jsonl").read()) == before
    ref = params(work / "export")
    cmd = cli(work, data)
    cmd.insert(2, "--re-export")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exported the trained model" in r.stdout and "nan" not in r.stdout, r.stdout
    assert (os.stat(marker).st_mtime_ns, os.stat(marker).st_ino) != before[:2]
    assert open(work / "metrics.jsonl").read() == before[2]
    for x, y in zip(jax.tree.leaves(ref), jax.tree.leaves(params(work / "export"))):
        np.testing.assert_array_equal(x, y)


def test_launch_flags_are_arguments_of_run(monkeypatch):
    """train.py --coordinator/--num-processes/--process-id reach run() and jax's start-up as arguments; the
    process environment is left alone."""
    from vxl_jax.cli import train as train_cli
    from vxl_jax.train import loop

    class Started(Exception):
        pass

    def fake_initialize(**kw):
        seen.update(kw)
        raise Started

    seen, before = {}, dict(os.environ)
    monkeypatch.setattr(loop, "maybe_initialize", fake_initialize)
    with pytest.raises(Started):
        train_cli.main(["--config", os.path.join(ROOT, "configs/train_tiny.yaml"), "--coordinator", "host0:8476",
                        "--num-processes", "2", "--process-id", "1"])
    assert seen == {"coordinator_address": "host0:8476", "num_processes": 2, "process_id": 1}
    assert dict(os.environ) == before
