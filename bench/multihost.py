"""Multi-host for real, on one machine: 2 processes x 4 fake CPU devices (gloo collectives) vs 1 process x 8.

    python bench/multihost.py                # train + prefill, prints the tables (several minutes on 2 cores)
    python bench/multihost.py --only prefill

train:   ``train.py`` (configs/train_tiny.yaml, mesh data 2 x fsdp 2 x tensor 2, global batch 4, synthetic
         data through Grain, each process loading its 2 rows of every batch) as a pair of processes
         (``--coordinator localhost:PORT --num-processes 2 --process-id I``) and as one process; then one
         process resumes the pair's step-``STEPS/2`` checkpoint and trains to the end. Per step: the
         three losses (they must be equal: same global batches, same ratios, same program).
prefill: the embedded tiny model on mesh ``fsdp=4,tensor=2`` (parameters split across both processes)
         prefills and greedily answers one prompt in 2 processes; compared with one device.
Exit code 1 when anything differs (what ``tests/test_multihost.py`` checks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH = ("model.runtime.mesh.data=2", "model.runtime.mesh.fsdp=2", "model.runtime.mesh.tensor=2")
PREFILL_MESH = "fsdp=4,tensor=2"
STEPS = 4
LOSS_TOL = 1e-5  # relative; the runs are the same program, they agree to the last bit here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def env_for(devices: int, cache: str, process: int | None = None, port: int | None = None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               VXL_JAX_CACHE=cache, PYTHONPATH=ROOT)
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "VXL_DISTRIBUTED"):
        env.pop(k, None)
    if process is not None:
        env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process))
    return env


def train_cmd(workdir: str, data: str, steps: int) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs/train_tiny.yaml"),
            f"train.workdir={workdir}", f"data.synthetic_dir={data}", "data.synthetic_train=8", "data.eval=null",
            "train.eval_every=0", f"train.steps={steps}", f"checkpoint.every={steps // 2}", "train.progress=false",
            "data.frames_upbound=12", "train.batch_size=4", "checkpoint.export=false", *MESH]


def run_pair(cmd_of, cache: str, timeout: float, via_env: bool) -> list[subprocess.CompletedProcess]:
    """Run ``cmd_of(process, port)`` as processes 0 and 1 of one distributed job (4 devices each); with
    ``via_env`` the coordinator is given by JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID."""
    port = free_port()
    procs = [subprocess.Popen(cmd_of(i, port), env=env_for(4, cache, i if via_env else None, port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    for r in out:
        if r.returncode:
            raise RuntimeError(f"process failed ({r.returncode}): {r.stderr[-3000:]}")
    return out


def losses(workdir: str) -> dict[int, float]:
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "loss" in rec:
                out[rec["step"]] = rec["loss"]
    return out


def run_one(cmd, cache, timeout) -> tuple[str, float]:
    """One process with 8 fake devices -> (its stdout, wall seconds); its stderr tail if it fails."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env_for(8, cache), capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return r.stdout, time.perf_counter() - t0


def bench_train(tmp: str, cache: str, timeout: float) -> tuple[list[tuple], bool, dict]:
    data = os.path.join(tmp, "data")
    pair, single, resumed = (os.path.join(tmp, n) for n in ("pair", "single", "resumed"))
    t0 = time.perf_counter()
    run_pair(lambda i, port: train_cmd(pair, data, STEPS) + ["--coordinator", f"localhost:{port}", "--num-processes",
                                                             "2", "--process-id", str(i)], cache, timeout, False)
    t_pair = time.perf_counter() - t0
    _, t_single = run_one(train_cmd(single, data, STEPS), cache, timeout)
    # one process resumes the checkpoint the pair wrote half way
    shutil.copytree(os.path.join(pair, "checkpoints"), os.path.join(resumed, "checkpoints"))
    shutil.rmtree(os.path.join(resumed, "checkpoints", str(STEPS)))
    out, t_resumed = run_one(train_cmd(resumed, data, STEPS), cache, timeout)
    if f"steps {STEPS // 2}->{STEPS}" not in out:
        raise RuntimeError(f"the single process did not resume the pair's checkpoint: {out[-2000:]}")
    a, b, c = losses(single), losses(pair), losses(resumed)
    rows, ok = [], sorted(a) == sorted(b) == list(range(1, STEPS + 1)) and sorted(c) == list(range(STEPS // 2 + 1,
                                                                                                      STEPS + 1))
    for s in sorted(a):
        diff = max(abs(a[s] - b.get(s, np.inf)), abs(a[s] - c[s]) if s in c else 0.0)
        ok &= diff <= LOSS_TOL * abs(a[s])
        rows.append((s, a[s], b.get(s), c.get(s), diff))
    timings = {"pair_s": t_pair, "single_s": t_single, "resumed_s": t_resumed}
    return rows, ok, timings


PREFILL_SCRIPT = """
import sys
import numpy as np
from vxl_jax.runtime.distributed import maybe_initialize
maybe_initialize()
import jax
from vxl_jax.infer.demo import default_model
rng = np.random.default_rng(0)
ids = np.concatenate([rng.integers(3, 500, 6), [-200], rng.integers(3, 500, 5)])
px = rng.normal(size=(3, 3, 336, 336)).astype(np.float32)
vx = default_model(mesh=sys.argv[1] if sys.argv[1] != "none" else None)
res = vx.prefill(ids, px, ratio=2)
new = vx.generate(ids, px, ratio=2, max_new_tokens=6)
gate = vx.engine.state["lm"]["layers"]["mlp"]["gate"]["kernel"][...]
split = sorted({d.process_index for d in gate.sharding.device_set}) if vx.mesh is not None else [0]
if jax.process_index() == 0:
    np.savez(sys.argv[2], logits=res.logits, ids=new, processes=np.asarray(split))
"""


def bench_prefill(tmp: str, cache: str, timeout: float) -> tuple[list[tuple], bool]:
    script = os.path.join(tmp, "prefill.py")
    with open(script, "w") as f:
        f.write(PREFILL_SCRIPT)
    pair_out, single_out = os.path.join(tmp, "pair.npz"), os.path.join(tmp, "single.npz")
    t0 = time.perf_counter()
    run_pair(lambda i, port: [sys.executable, script, PREFILL_MESH, pair_out], cache, timeout, True)
    t_pair = time.perf_counter() - t0
    r = subprocess.run([sys.executable, script, "none", single_out], env=env_for(1, cache), capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    a, b = np.load(single_out), np.load(pair_out)
    diff = float(np.abs(a["logits"] - b["logits"]).max())
    same = bool(np.array_equal(a["ids"], b["ids"]))
    ok = diff <= 1e-5 and same and b["processes"].tolist() == [0, 1]
    return [(PREFILL_MESH, b["processes"].tolist(), diff, same, t_pair)], ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["train", "prefill"], default=None)
    p.add_argument("--timeout", type=float, default=1800, help="per process, seconds")
    args = p.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory(prefix="vxl_multihost_") as tmp:
        cache = os.path.join(tmp, "xla_cache")
        if args.only in (None, "train"):
            rows, good, timings = bench_train(tmp, cache, args.timeout)
            print("train.py, configs/train_tiny.yaml, mesh data 2 x fsdp 2 x tensor 2, global batch 4")
            print("| step | 1 process x 8 devices | 2 processes x 4 devices | 1 process resuming the pair's "
                  f"step-{STEPS // 2} checkpoint | max abs diff |")
            print("|---|---|---|---|---|")
            for s, a, b, c, d in rows:
                print(f"| {s} | {a:.7f} | {b:.7f} | {'' if c is None else f'{c:.7f}'} | {d:.1e} |")
            print("wall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
            print("train:", "OK" if good else "MISMATCH", flush=True)
            ok &= good
        if args.only in (None, "prefill"):
            rows, good = bench_prefill(tmp, cache, args.timeout)
            print("\nsharded prefill + 6 greedy tokens, embedded tiny model")
            print("| mesh | parameter shards on processes | max abs logit diff vs 1 device | same greedy ids "
                  "| pair wall s |")
            print("|---|---|---|---|---|")
            for m, procs, d, same, t in rows:
                print(f"| {m} | {procs} | {d:.1e} | {same} | {t:.0f} |")
            print("prefill:", "OK" if good else "MISMATCH", flush=True)
            ok &= good
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
