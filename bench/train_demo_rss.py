"""What the training demo's peak RSS is made of (issue 8: a new user saw 7.1 GB).

Part 1 (``run``): ``train.py --config configs/tiny.yaml`` as a user runs it (336-px frames, 12
frames, batch 2), in a subprocess with a FRESH XLA compilation cache (like a first run; the
persistent cache would otherwise skip the compiles) and a temporary workdir. The RSS of the process
tree is sampled every 0.1 s; reported: peak RSS (main process, and the sum over child processes such
as Grain workers), when it happened, and the last output line before it.

Part 2 (``phases``): the same setup rebuilt step by step in a fresh subprocess (the loop's own
functions: setup_data, build_model, init_state, Trainer), measuring RSS (current and peak) after
each phase: imports, data (synthetic video set), model + sharded state, one host batch, lowering,
XLA compile of the train step, its first run, a second run, compile + run of the eval step, an
Orbax checkpoint save; plus ``memory_analysis()`` of both compiled steps (on CPU the temporaries
are host memory allocated at run time).

    python bench/train_demo_rss.py                 # both parts (~5-10 min on 2 cores)
    python bench/train_demo_rss.py --part phases   # part 2 only
    python bench/train_demo_rss.py --warm-cache    # part 1 with the user's persistent compile cache
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
MiB = 1 << 20


def _cur_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- part 1

def part_run(config: str, warm_cache: bool, overrides: list[str]):
    import psutil

    tmp = tempfile.mkdtemp(prefix="vxl_demo_rss_")
    env = dict(os.environ)
    if not warm_cache:
        env["VXL_JAX_CACHE"] = os.path.join(tmp, "xla_cache")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", config,
           f"train.workdir={os.path.join(tmp, 'run')}", "train.progress=false"] + overrides
    print(f"part 1: {' '.join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd[1:])}\n"
          f"        ({'persistent' if warm_cache else 'fresh'} compile cache, workdir in {tmp})", flush=True)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []

    def reader():
        for ln in p.stdout:
            lines.append((time.perf_counter() - t0, ln.rstrip()))

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    proc = psutil.Process(p.pid)
    samples = []  # (t, main rss, children rss, n children)
    while p.poll() is None:
        try:
            main = proc.memory_info().rss
            kids = proc.children(recursive=True)
            krss = 0
            for k in kids:
                try:
                    krss += k.memory_info().rss
                except psutil.Error:
                    pass
            samples.append((time.perf_counter() - t0, main / MiB, krss / MiB, len(kids)))
        except psutil.Error:
            pass
        time.sleep(0.1)
    th.join(timeout=5)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    for t, ln in lines:
        if ln.strip():
            print(f"  [{t:6.1f}s] {ln[:150]}")
    if p.returncode:
        print(f"train.py failed (rc {p.returncode})")
    tp, mp, kp, nk = max(samples, key=lambda s: s[1] + s[2])
    before = [ln for t, ln in lines if t <= tp and ln.strip()]
    print(f"\npart 1 result: wall {wall:.1f} s; peak RSS (sampled, main + children) {mp + kp:.0f} MiB = main {mp:.0f} "
          f"+ {nk} child process(es) {kp:.0f} MiB at t={tp:.1f} s (after: {before[-1][:90] if before else 'start'!r}); "
          f"ru_maxrss of the largest process {ru:.0f} MiB ({ru * MiB / 1e9:.2f} GB)")
    # a coarse RSS timeline: the max in each output-line interval
    marks = [0.0] + [t for t, ln in lines if ln.strip()] + [wall + 1]
    print("  RSS timeline (max main RSS between consecutive output lines):")
    prev = None
    for a, b in zip(marks[:-1], marks[1:]):
        seg = [s[1] + s[2] for s in samples if a <= s[0] < b]
        if seg and (prev is None or abs(max(seg) - prev) > 50):
            lab = next((ln for t, ln in lines if t == b), "(end)")
            print(f"    {a:6.1f}-{min(b, wall):6.1f}s  max {max(seg):6.0f} MiB   until: {lab[:80]}")
            prev = max(seg)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return {"peak_mib": mp + kp, "ru_maxrss_mib": ru, "wall_s": wall}


# ---------------------------------------------------------------------------------------------- part 2

def part_phases(config: str, overrides: list[str]):
    """Runs in a fresh process (see main)."""
    rows = []

    def mark(name, note=""):
        rows.append((name, _cur_mib(), _peak_mib(), note))
        print(f"  {name:<34} RSS {rows[-1][1]:7.0f} MiB   peak {rows[-1][2]:7.0f} MiB   {note}", flush=True)

    mark("python start")
    import jax
    import numpy as np

    from vxl_jax.runtime import sharding as sh
    from vxl_jax.train import loop
    from vxl_jax.train import step as st
    from vxl_jax.train.config import load_run_config

    mark("import jax + vxl_jax")
    tmp = tempfile.mkdtemp(prefix="vxl_demo_phases_")
    jax.config.update("jax_compilation_cache_dir", os.path.join(tmp, "xla"))  # fresh: really compile
    rc = load_run_config(config, overrides)
    cfg, tcfg, dcfg, ccfg, ratios = rc.model, rc.train, rc.data, rc.checkpoint, rc.ratios
    mesh = sh.make_mesh(cfg.runtime.mesh)
    loader, eval_records, spec = loop.setup_data(cfg, tcfg, dcfg, os.path.join(tmp, "run"), 1)
    mark("data (synthetic set + loader)")
    trainer, state = st.build_trainer(loop.build_model(cfg, tcfg, ccfg), tcfg, mesh, ratios)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    mark("model + train state", f"{n_params:,} trainable params")
    trainer = trainer.compile()
    batch = next(loader)
    px = batch["pixels"]
    host_bytes = sum(v.nbytes for v in batch.values())
    mark("one host batch", f"pixels {px.dtype} {list(px.shape)} = {px.nbytes / MiB:.1f} MiB; batch "
                           f"{host_bytes / MiB:.1f} MiB")
    gb = st.to_global(batch, mesh, tcfg.batch_size, trainer.rules)
    lowered = trainer.train_step.lower(state, gb)
    mark("lower train step")
    t = time.perf_counter()
    compiled = lowered.compile()
    ct = time.perf_counter() - t
    ma = compiled.memory_analysis()
    mark("compile train step", f"{ct:.1f} s; memory_analysis: args {ma.argument_size_in_bytes / MiB:.1f} MiB, "
                               f"out {ma.output_size_in_bytes / MiB:.1f}, temp {ma.temp_size_in_bytes / MiB:.1f} MiB")
    train_temp = ma.temp_size_in_bytes
    del lowered
    t = time.perf_counter()
    state, m = compiled(state, gb)
    jax.block_until_ready(m)
    mark("train step run 1", f"{time.perf_counter() - t:.1f} s")
    batch2 = next(loader)
    state, m = compiled(state, st.to_global(batch2, mesh, tcfg.batch_size, trainer.rules))
    jax.block_until_ready(m)
    mark("train step run 2")
    eval_temp = None
    if eval_records:
        from vxl_jax.data.pipeline import TrainLoader

        el = TrainLoader(eval_records, spec, tcfg.batch_size, 1, shuffle=False, num_epochs=1)
        eb = st.to_global(next(iter(el)), mesh, tcfg.batch_size, trainer.rules)
        W = cfg.beacon.windows_for_frames(dcfg.frames_upbound)
        idx = jax.numpy.full((W,), ratios.index(tcfg.eval_ratio), jax.numpy.int32)
        t = time.perf_counter()
        ec = trainer.eval_step.lower(state, eb, idx).compile()
        ema = ec.memory_analysis()
        eval_temp = ema.temp_size_in_bytes
        mark("compile eval step", f"{time.perf_counter() - t:.1f} s; temp {eval_temp / MiB:.1f} MiB")
        out = ec(state, eb, idx)
        jax.block_until_ready(out)
        mark("eval step run")
    from vxl_jax.train.checkpointing import Checkpoints

    ck = Checkpoints(os.path.join(tmp, "ckpt"), keep=2)
    ck.save(2, state, loader.get_state(), force=True)
    ck.close()
    mark("orbax checkpoint save")
    print(json.dumps({"rows": rows, "train_temp": train_temp, "eval_temp": eval_temp, "pixels_bytes": int(px.nbytes)}),
          file=sys.stderr)
    # summary: where the peak was set
    print("\n  peak increments (which phase raised the process's peak RSS):")
    prev = 0.0
    for name, cur, peak, _ in rows:
        if peak - prev > 1:
            print(f"    +{peak - prev:7.0f} MiB  {name}")
        prev = peak
    print(f"  compiled temp: train step {train_temp / MiB:.0f} MiB"
          + (f", eval step {eval_temp / MiB:.0f} MiB" if eval_temp is not None else ""))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "tiny.yaml"))
    ap.add_argument("--part", choices=("all", "run", "phases"), default="all")
    ap.add_argument("--warm-cache", action="store_true", help="part 1 uses the persistent compile cache")
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="key=value overrides passed to the preset (both parts)")
    a = ap.parse_args()
    if a.in_process:
        return part_phases(a.config, a.overrides)
    if a.part in ("all", "run"):
        part_run(a.config, a.warm_cache, a.overrides)
    if a.part in ("all", "phases"):
        print("\npart 2: phases, rebuilt step by step in a fresh process", flush=True)
        subprocess.run([sys.executable, os.path.abspath(__file__), "--in-process", "--config", a.config] + a.overrides,
                       cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
