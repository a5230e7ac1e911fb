"""Compiled memory of the train step vs number of frames (lower + compile only: nothing is run).

CPU mode (default): the tiny preset (configs/tiny.yaml), batch 1, accum 1, all of the preset's
ratios ([2, 4, 8, 12, 16]), remat as the preset's runtime (the training default), 1-device mesh.
For each frame count the train step (``vxl_jax.train.step.Trainer.train_step``: forward, backward,
AdamW) is lowered on abstract inputs and compiled; ``memory_analysis()`` gives arguments, output
and temporaries. A least-squares line over the frame counts gives the slope (MiB per frame) and
the intercept (base). Goals (issue 8): <= 5 MiB per frame, <= 0.5 GiB base.

TPU mode (``--tpu``; run with the jax[tpu] venv): the released 7B config (configs/videoxl_7b.yaml,
bf16, remat ``full``, everything trainable, ratios [2, 4, 8, 12, 16]) compiled ahead of time for a
``v5p:2x2x2`` slice (8 chips, fsdp over 8), batch 1 per chip (global batch 8). The state is
abstract (ShapeDtypeStruct with shardings); the per-chip arguments / output / temp are compared
to the chip's 95 GiB of HBM. Goals: <= 20 GiB per chip at 128 frames; 256 frames fit. One 7B
compile takes ~7 min and ~11 GB of host RSS: give ONE frame count per invocation.

    python bench/train_memory.py                          # tiny, CPU: 20,40,80,160 frames
    python bench/train_memory.py --frames 20,40 --eval    # also the eval step
    .venv-tpu/bin/python bench/train_memory.py --tpu --frames 128
    .venv-tpu/bin/python bench/train_memory.py --tpu --frames 256
    python bench/train_memory.py --frames 12 --batch 2 --top-buffers 15   # what the temp is made of
    python bench/train_memory.py --frames 20,40 --ratios 8                # one ratio: no lax.switch union

Pixel layout/dtype of the batch are taken from the data pipeline itself (one sample of a tiny
self-made video through ``ProcessRecord``), so the bench follows the pipeline's format (float32
[F, 3, H, W] or uint8 [F, H, W, 3]); ``--pixels`` forces one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

MiB, GiB = 1 << 20, 1 << 30
HBM_V5P_GIB = 95.0


def _args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--frames", default=None, help="comma-separated frame counts (CPU default 20,40,80,160; "
                                                   "--tpu default 128: one per invocation)")
    ap.add_argument("--config", default=None, help="preset (default tiny.yaml; --tpu: videoxl_7b.yaml)")
    ap.add_argument("--batch", type=int, default=None, help="global batch (default 1; --tpu: 1 per chip)")
    ap.add_argument("--remat", default=None, help="override runtime.remat (default: preset's; --tpu: full)")
    ap.add_argument("--ratios", default="2,4,8,12,16")
    ap.add_argument("--prefix", type=int, default=None, help="max prefix tokens (default: preset data section, 32)")
    ap.add_argument("--suffix", type=int, default=None, help="max suffix tokens (default: preset data section, 64)")
    ap.add_argument("--pixels", choices=("auto", "float32", "uint8"), default="auto",
                    help="pixel batch format (auto: what the data pipeline produces)")
    ap.add_argument("--eval", action="store_true", help="also compile the eval step (CPU mode)")
    ap.add_argument("--tpu", action="store_true", help="7B for v5p:2x2x2 ahead of time (needs jax[tpu])")
    ap.add_argument("--topology", default="v5p:2x2x2")
    ap.add_argument("--hbm-gib", type=float, default=HBM_V5P_GIB)
    ap.add_argument("--json", default=None, help="append one JSON line per frame count to this file")
    ap.add_argument("--top-buffers", type=int, default=0, metavar="N",
                    help="dump XLA's buffer assignment and list the N largest temp buffers by shape (what the temp is)")
    return ap.parse_args()


def enable_buffer_dump() -> str:
    """Set XLA_FLAGS (before jax is imported) so that the train step's buffer assignment is dumped."""
    d = tempfile.mkdtemp(prefix="vxl_bufdump_")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={d}"
                               " --xla_dump_hlo_module_re=.*train_step.*").strip()
    return d


def top_buffers(dump_dir: str, n: int, min_mib: float = 1.0):
    """Largest temp values of the newest train-step buffer assignment, grouped by shape.

    A value's ``offset`` inside the temp allocation tells buffers apart: "x k" = k distinct places of
    that shape (live at different times or together). Prints shape, MiB each, count and the first names.
    """
    import collections
    import glob
    import re

    files = [f for f in glob.glob(os.path.join(dump_dir, "*train_step*buffer-assignment.txt"))]
    if not files:
        print(f"(no buffer-assignment dump found in {dump_dir})")
        return
    txt = open(max(files, key=os.path.getmtime)).read()
    groups = collections.defaultdict(lambda: [set(), []])
    for block in re.split(r"\n(?=allocation \d+:)", txt):
        head = block.split("\n", 1)[0]
        if not head.startswith("allocation") or "parameter" in head or "constant" in head:
            continue
        for name, size, off, shape in re.findall(r"value: <\d+ (\S+) @\d+> \(size=(\d+),offset=(\d+)\): (\S+)", block):
            if int(size) < min_mib * MiB:
                continue
            g = groups[(int(size), shape.split("{")[0])]
            g[0].add((head.split(":")[0], int(off)))
            if len(g[1]) < 3:
                g[1].append(name)
    rows = sorted(groups.items(), key=lambda kv: -kv[0][0] * len(kv[1][0]))[:n]
    print("\nlargest temp buffers (XLA buffer assignment; MiB each x distinct places = MiB):")
    for (size, shape), (places, names) in rows:
        print(f"  {size / MiB:9.1f} x {len(places):2d} = {size * len(places) / MiB:9.1f}  {shape:<44} {', '.join(names)[:70]}")



def pixel_format(image_size: int, mode: str = "auto"):
    """-> (trailing shape of one frame, numpy dtype name) of ``pixels`` as the data pipeline builds them."""
    if mode == "float32":
        return (3, image_size, image_size), "float32"
    if mode == "uint8":
        return (image_size, image_size, 3), "uint8"
    import numpy as np

    from vxl_jax.data.pipeline import ProcessRecord, SampleSpec
    from vxl_jax.data.synthetic import colour_frames, colour_record
    from vxl_jax.media.video import write_video

    with tempfile.TemporaryDirectory() as d:
        write_video(os.path.join(d, "v.mp4"), colour_frames("red", 0, 2, 1), fps=1)
        rec = colour_record("probe", "v.mp4", "red")
        spec = SampleSpec(frames_upbound=2, image_size=image_size, video_folder=d)
        out = ProcessRecord(spec).map(rec)
    if not out.get("_ok"):
        raise RuntimeError(f"pipeline probe failed: {out}")
    px = np.asarray(out["pixels"])
    return tuple(px.shape[1:]), str(px.dtype)


def batch_struct(frames, batch, prefix, suffix, frame_shape, px_dtype, mesh=None, rules="fsdp"):
    """Abstract step batch {field: ShapeDtypeStruct [accum=1, B, ...]} (with shardings when mesh is given)."""
    import jax
    import jax.numpy as jnp

    i32 = jnp.int32
    shapes = {"prefix_ids": ((1, batch, prefix), i32), "prefix_labels": ((1, batch, prefix), i32),
              "prefix_len": ((1, batch), i32), "pixels": ((1, batch, frames) + tuple(frame_shape), jnp.dtype(px_dtype)),
              "num_frames": ((1, batch), i32), "suffix_ids": ((1, batch, suffix), i32),
              "suffix_labels": ((1, batch, suffix), i32), "suffix_len": ((1, batch), i32)}
    out = {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()}
    if mesh is not None:
        from vxl_jax.train import step as st

        shard = st.batch_shardings(mesh, out, rules)
        out = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shard[k]) for k, v in out.items()}
    return out


def abstract_trainer(cfg, tcfg, ratios, mesh):
    """Trainer + abstract train state (ShapeDtypeStruct with shardings); nothing allocated.
    Runtime settings (remat, attention, dtypes, sharding rules) are ``cfg.runtime``'s."""
    import jax
    import jax.numpy as jnp

    from vxl_jax.model import abstract_model
    from vxl_jax.train import optim
    from vxl_jax.train import step as st

    tx = optim.make_optimizer(tcfg)
    graphdef, params, frozen = st.split_model(abstract_model(cfg), optim.trainable_filter(tcfg.trainable,
                                                                                         tcfg.freeze_vision))
    abstract = {"params": params, "frozen": frozen, "opt": jax.eval_shape(tx.init, params),
                "step": jax.ShapeDtypeStruct((), jnp.int32), "key": jax.ShapeDtypeStruct((2,), jnp.uint32)}
    shardings = st.state_shardings(abstract, tx, mesh, cfg.runtime.sharding)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    trainer = st.Trainer(graphdef, cfg, tx, optim.lr_schedule(tcfg), tuple(ratios), mesh, shardings,
                         keep_memory=tcfg.keep_memory).compile()
    n_params = sum(int(x.size) for x in jax.tree.leaves(abstract["params"])) + \
        sum(int(x.size) for x in jax.tree.leaves(abstract["frozen"]))
    return trainer, state, n_params


def mem_row(m) -> dict:
    return {"args": m.argument_size_in_bytes, "out": m.output_size_in_bytes, "temp": m.temp_size_in_bytes,
            "alias": m.alias_size_in_bytes,
            "total": m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compile_train(trainer, state, batch):
    t0 = time.perf_counter()
    compiled = trainer.train_step.lower(state, batch).compile()
    dt = time.perf_counter() - t0
    m = mem_row(compiled.memory_analysis())
    del compiled
    return m, dt


def fit(xs, ys):
    import numpy as np

    if len(xs) < 2:
        return float("nan"), float("nan")
    slope, icpt = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(slope), float(icpt)


def run_cpu(a):
    import jax
    import jax.numpy as jnp

    from vxl_jax.runtime import sharding as sh
    from vxl_jax.config import VideoXLConfig, load_yaml_sections
    from vxl_jax.train.config import from_sections

    cfg_path = a.config or os.path.join(ROOT, "configs", "tiny.yaml")
    sections = load_yaml_sections(cfg_path, [])
    cfg = VideoXLConfig.from_dict(sections["model"])
    tcfg, dcfg, _ = from_sections(sections)
    remat = a.remat or cfg.runtime.remat
    cfg = cfg.with_runtime(remat=remat)
    ratios = tuple(int(r) for r in a.ratios.split(",")) if a.ratios else (tuple(tcfg.ratios) or cfg.beacon.ratios)
    batch = a.batch or 1
    prefix, suffix = a.prefix or dcfg.max_prefix, a.suffix or dcfg.max_suffix
    frames_list = [int(x) for x in (a.frames or "20,40,80,160").split(",")]
    frame_shape, px_dtype = pixel_format(cfg.vision.image_size, a.pixels)
    mesh = sh.make_mesh((1, 1, 1), jax.devices()[:1])
    trainer, state, n_params = abstract_trainer(cfg, tcfg, ratios, mesh)
    print(f"train step memory (compiled, nothing run): {os.path.relpath(cfg_path, ROOT)}, {n_params:,} params, "
          f"{jax.default_backend()}, batch {batch}, accum 1, ratios {list(ratios)}, remat {remat}, "
          f"prefix {prefix} + suffix {suffix} tokens, pixels {px_dtype} {list(frame_shape)}", flush=True)
    hdr = (f"{'frames':>6} {'windows':>7} {'args MiB':>9} {'out MiB':>8} {'temp MiB':>9} {'temp GiB':>8} "
           f"{'temp MiB/frame':>14} {'compile s':>9}" + (f" {'eval temp MiB':>13}" if a.eval else ""))
    print(hdr, flush=True)
    rows = []
    for F in frames_list:
        b = batch_struct(F, batch, prefix, suffix, frame_shape, px_dtype)
        m, dt = compile_train(trainer, state, b)
        if a.top_buffers:
            top_buffers(a.dump_dir, a.top_buffers)
        ev = None
        if a.eval:
            W = cfg.beacon.windows_for_frames(F)
            ec = trainer.eval_step.lower(state, b, jax.ShapeDtypeStruct((W,), jnp.int32)).compile()
            ev = mem_row(ec.memory_analysis())
            del ec
        rows.append((F, m))
        print(f"{F:>6} {cfg.beacon.windows_for_frames(F):>7} {m['args'] / MiB:>9.1f} "
              f"{m['out'] / MiB:>8.1f} {m['temp'] / MiB:>9.1f} {m['temp'] / GiB:>8.2f} {m['temp'] / MiB / F:>14.1f} "
              f"{dt:>9.1f}" + (f" {ev['temp'] / MiB:>13.1f}" if ev else ""), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps({"mode": "cpu", "config": cfg_path, "frames": F, "batch": batch, "remat": remat,
                                    **m, "compile_s": dt, "eval": ev}) + "\n")
    slope, icpt = fit([r[0] for r in rows], [r[1]["temp"] for r in rows])
    if len(rows) >= 2:
        ok_s, ok_b = slope / MiB <= 5.0, icpt / GiB <= 0.5
        print(f"\ntemp ~= {icpt / GiB:.3f} GiB base + {slope / MiB:.2f} MiB per frame "
              f"(least squares over {[r[0] for r in rows]} frames)")
        print(f"goals: <= 5 MiB per frame [{'met' if ok_s else 'NOT met'}], <= 0.5 GiB base "
              f"[{'met' if ok_b else 'NOT met'}]   (issue 8 baseline: 1.5 GiB + 51 MiB per frame; "
              f"2.57/3.59/5.64/9.77 GiB at 20/40/80/160)")
    print(f"peak host RSS of this process: {peak_rss_mib():.0f} MiB")


def run_tpu(a):
    from jax.experimental import topologies

    from vxl_jax.runtime import sharding as sh
    from vxl_jax.config import VideoXLConfig
    from vxl_jax.train.config import TrainConfig

    frames_list = [int(x) for x in (a.frames or "128").split(",")]
    if len(frames_list) > 1:
        print("warning: several 7B compiles in one process (each ~7 min, ~11 GB RSS); prefer one per invocation",
              file=sys.stderr)
    cfg_path = a.config or os.path.join(ROOT, "configs", "videoxl_7b.yaml")
    cfg = VideoXLConfig.from_yaml(cfg_path)
    remat = a.remat or "full"
    cfg = cfg.with_runtime(remat=remat)
    ratios = tuple(int(r) for r in a.ratios.split(","))
    tcfg = TrainConfig(trainable="all", batch_size=1, accum=1)
    topo = topologies.get_topology_desc(topology_name=a.topology, platform="tpu")
    devices = list(topo.devices)
    n = len(devices)
    mesh = sh.make_mesh((1, n, 1), devices)
    batch = a.batch or n  # 1 per chip
    prefix, suffix = a.prefix or 32, a.suffix or 64
    frame_shape, px_dtype = pixel_format(cfg.vision.image_size, a.pixels)
    trainer, state, n_params = abstract_trainer(cfg, tcfg, ratios, mesh)
    print(f"7B train step compiled ahead of time for {a.topology} ({n} x {devices[0].device_kind}), mesh "
          f"{dict(mesh.shape)}: {n_params / 1e9:.2f} B params ({cfg.runtime.param_dtype}), all trainable, remat "
          f"{remat}, ratios {list(ratios)}, global batch {batch} ({batch / n:g} per chip), prefix {prefix} + "
          f"suffix {suffix} tokens, pixels {px_dtype} {list(frame_shape)}", flush=True)
    for F in frames_list:
        b = batch_struct(F, batch, prefix, suffix, frame_shape, px_dtype, mesh)
        m, dt = compile_train(trainer, state, b)
        if a.top_buffers:
            top_buffers(a.dump_dir, a.top_buffers)
        total = m["args"] + m["temp"] + m["out"] - m["alias"]
        fits = total / GiB <= a.hbm_gib
        print(f"\n{'frames':>6} {'args GiB':>9} {'out GiB':>8} {'alias GiB':>9} {'temp GiB':>9} {'total GiB':>9} "
              f"{'HBM GiB':>8} {'fits':>5} {'compile s':>9} {'host RSS GiB':>12}")
        print(f"{F:>6} {m['args'] / GiB:>9.2f} {m['out'] / GiB:>8.2f} {m['alias'] / GiB:>9.2f} {m['temp'] / GiB:>9.2f} "
              f"{total / GiB:>9.2f} {a.hbm_gib:>8.1f} {'yes' if fits else 'NO':>5} {dt:>9.1f} "
              f"{peak_rss_mib() / 1024:>12.1f}", flush=True)
        print("goals: <= 20 GiB per chip at 128 frames; 256 frames fit in 95 GiB "
              "(issue 8 baseline at 128 frames: 6.0 GiB args + 41.0 GiB temp)")
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps({"mode": "tpu", "topology": a.topology, "frames": F, "batch": batch,
                                    "remat": remat, **m, "total_per_chip": total, "compile_s": dt,
                                    "host_rss_mib": peak_rss_mib()}) + "\n")


def main():
    a = _args()
    a.dump_dir = enable_buffer_dump() if a.top_buffers else None
    try:
        if a.tpu:
            run_tpu(a)
        else:
            run_cpu(a)
    finally:
        if a.dump_dir:
            import shutil

            shutil.rmtree(a.dump_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
