"""Per-chip memory of the real 7B steps, compiled ahead of time for named TPU slices (nothing is allocated or run).

Needs the ``[tpu]`` extra (``jax[tpu]``: libtpu, the real TPU compiler); runs on a CPU-only machine.
``jax.experimental.topologies`` describes the slice, every input is an abstract ``ShapeDtypeStruct``
carrying its sharding, and ``jit(...).lower(...).compile().memory_analysis()`` gives each chip's
arguments, outputs and temporaries. These are compiled figures, not measured ones.

Steps (configs/videoxl_7b.yaml, bf16 parameters):

``train``    ``Trainer.train_step`` (forward, lean backward, AdamW) as in ``bench/train_memory.py --tpu``:
             everything trainable, remat ``full``, ratios 2/4/8/12/16 drawn per window, fsdp over all
             chips, batch 1 per chip, prefix 32 + suffix 64 tokens, uint8 frames.
``windows``  one window-scan call of the inference engine (``core.FRAME_CALL_WINDOWS`` windows of uint8
             frames, ratio 16), its memory sized for the whole video and donated, as ``VideoXL.prefill``
             runs it;
``text``     the prompt text after the video (one ``core.TEXT_BUCKET`` of tokens) over that memory;
``decode``   one on-device decoding chunk (``core.DECODE_CHUNK`` greedy tokens) over that memory.

Inference runs on the ``inference`` rules of :mod:`vxl_jax.runtime.sharding` (what ``VideoXL.load(..., mesh=)``
uses): the slice's 8 chips as ``fsdp=2 x tensor=4`` (28 query heads and 4 KV heads split 4 ways, MLP and
vocabulary 8 ways; the KV memory over its KV heads). The memory is sized like ``VideoXL.generate`` sizes
it: 14 prompt tokens before and 20 after the video, ``--max-new`` tokens of room.

Per-chip total = arguments + outputs + temporaries - aliased (donated) bytes. A prefill's peak is its
largest step. The largest frame count that fits a slice comes from a line through the two compiled
frame counts of every step (the arguments grow with the kept KV), checked by one more compile of each
step at that count unless ``--no-check``. HBM per chip (nominal): v5p 95 GiB, v5e 16 GiB, v6e 32 GiB.

    .venv-tpu/bin/python bench/aot.py                                  # all tables (~1-2 h here)
    .venv-tpu/bin/python bench/aot.py --train 128,256 --infer ""       # train only (two 7B compiles)
    .venv-tpu/bin/python bench/aot.py --train "" --slices v5e:2x4      # inference on one slice
    .venv-tpu/bin/python bench/aot.py --train "" --frames 2048 --no-fit --steps windows

One 7B train compile takes ~7 min and ~11 GB of host RSS on 2 idle cores (45 min under load); the
inference compiles 10 s - 8 min each and ~1.7 GB. libtpu allows one process at a time (a lockfile):
set ALLOW_MULTIPLE_LIBTPU_LOAD=1 to compile in a second process while another one holds it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import types

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GiB = 1 << 30
HBM_GIB = {"v5p": 95.0, "v5e": 16.0, "v6e": 32.0, "v4": 32.0}
TRAIN_SLICE = "v5p:2x2x2"
INFER_SLICES = ("v5e:2x4", "v6e:2x4")
INFER_MESH = {"fsdp": 2, "tensor": 4}
PROMPT_BEFORE, PROMPT_AFTER = 14, 20


def _args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "videoxl_7b.yaml"))
    ap.add_argument("--train", default="128,256", help="train-step frame counts on --train-slice ('' = none)")
    ap.add_argument("--train-slice", default=TRAIN_SLICE)
    ap.add_argument("--infer", default="windows,text,decode", dest="steps_csv",
                    help="inference steps to compile ('' = none)")
    ap.add_argument("--steps", default=None, help="alias of --infer")
    ap.add_argument("--slices", default=",".join(INFER_SLICES), help="inference slices")
    ap.add_argument("--frames", default="2048,16384", help="inference frame counts (two: the fitted line)")
    ap.add_argument("--ratio", type=int, default=16)
    ap.add_argument("--max-new", type=int, default=256, help="memory room for generated tokens")
    ap.add_argument("--mesh", default=",".join(f"{k}={v}" for k, v in INFER_MESH.items()),
                    help="inference mesh on each slice (axis=size pairs)")
    ap.add_argument("--no-fit", action="store_true", help="no largest-frame-count estimate")
    ap.add_argument("--no-check", action="store_true", help="do not compile at the estimated largest frame count")
    ap.add_argument("--json", default=None, help="append one JSON line per compiled step to this file")
    a = ap.parse_args()
    if a.steps is not None:
        a.steps_csv = a.steps
    return a


def hbm_gib(topology: str) -> float:
    return HBM_GIB[topology.split(":")[0]]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def mem_row(compiled) -> dict:
    m = compiled.memory_analysis()
    row = {"args": m.argument_size_in_bytes, "out": m.output_size_in_bytes, "temp": m.temp_size_in_bytes,
           "alias": m.alias_size_in_bytes}
    row["total"] = row["args"] + row["out"] + row["temp"] - row["alias"]
    return row


def _gib(x) -> str:
    return f"{x / GiB:.2f}"


def print_header():
    print(f"\n{'slice':<10} {'step':<8} {'frames':>6} {'args GiB':>9} {'temp GiB':>9} {'out-alias':>9} "
          f"{'total GiB':>9} {'HBM GiB':>7} {'fits':>4} {'compile s':>9}", flush=True)


def print_row(slice_name, step, frames, r, hbm, dt):
    fits = r["total"] / GiB <= hbm
    print(f"{slice_name:<10} {step:<8} {frames:>6} {_gib(r['args']):>9} {_gib(r['temp']):>9} "
          f"{_gib(r['out'] - r['alias']):>9} {_gib(r['total']):>9} {hbm:>7.0f} {'yes' if fits else 'NO':>4} "
          f"{dt:>9.0f}", flush=True)


def record(path, **row):
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------------ train


def run_train(a, frames_list):
    """The 7B train step on the train slice, via bench/train_memory.py's abstract trainer and batch."""
    from jax.experimental import topologies

    import train_memory as tm
    from vxl_jax.runtime import sharding as sh
    from vxl_jax.config import VideoXLConfig
    from vxl_jax.train.config import TrainConfig

    cfg = VideoXLConfig.from_yaml(a.config).with_runtime(remat="full")
    devices = list(topologies.get_topology_desc(topology_name=a.train_slice, platform="tpu").devices)
    n = len(devices)
    mesh = sh.make_mesh((1, n, 1), devices)
    tcfg = TrainConfig(trainable="all", batch_size=1, accum=1)
    trainer, state, _ = tm.abstract_trainer(cfg, tcfg, (2, 4, 8, 12, 16), mesh)
    frame_shape, px_dtype = tm.pixel_format(cfg.vision.image_size, "auto")
    hbm = hbm_gib(a.train_slice)
    rows = []
    for F in frames_list:
        b = tm.batch_struct(F, n, 32, 64, frame_shape, px_dtype, mesh)
        t0 = time.perf_counter()
        r = mem_row(trainer.train_step.lower(state, b).compile())
        dt = time.perf_counter() - t0
        print_row(a.train_slice, "train", F, r, hbm, dt)
        record(a.json, slice=a.train_slice, step="train", frames=F, **r, compile_s=dt)
        rows.append((F, r))
    return rows


# ------------------------------------------------------------------------------------------ inference


def memory_slots(cfg, frames: int, ratio: int, max_new: int) -> int:
    """KV slots ``VideoXL.generate`` reserves for a prompt with ``frames`` frames at a fixed ratio."""
    from vxl_jax.infer import core

    b = cfg.beacon
    windows = -(-frames * b.tokens_per_frame // b.window)
    return core.capacity(PROMPT_BEFORE + windows * (b.window // ratio) + PROMPT_AFTER + max_new)


class InferenceSteps:
    """The engine's inference steps (vxl_jax.infer.engine) on a slice, traced exactly as ``Engine`` traces them
    on a mesh (``Engine._traced``: under the activation rules, memory outputs pinned to their shardings)."""

    def __init__(self, cfg, topology: str, mesh_sizes: dict, rules="inference"):
        import jax
        from flax import nnx
        from jax.experimental import topologies

        from vxl_jax.runtime import sharding as sh
        from vxl_jax.model import abstract_model

        self.cfg = cfg
        devices = list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
        self.mesh = sh.inference_mesh(mesh_sizes, devices)
        self.rules = rules
        self.graphdef, state = nnx.split(abstract_model(cfg))
        self.state = sh.abstract_sharded_state(state, self.mesh, rules)
        self.rep = sh.replicated(self.mesh)
        self.n_params = sum(int(x.size) for x in jax.tree.leaves(state))

    def _struct(self, shape, dtype):
        import jax

        return jax.ShapeDtypeStruct(shape, dtype, sharding=self.rep)

    def memory(self, slots: int):
        import jax

        from vxl_jax.runtime import sharding as sh
        from vxl_jax.beacon.memory import KVMemory
        from vxl_jax.model.layers import dtype_of

        lm = self.cfg.lm
        dt = dtype_of(self.cfg.runtime.compute_dtype)
        mem = jax.eval_shape(lambda: KVMemory.empty(lm.num_layers, 1, slots, lm.num_kv_heads, lm.head_dim, dt))
        shard = sh.memory_shardings(mem, self.mesh, self.rules)
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), mem, shard)

    def compile(self, step: str, slots: int, ratio: int):
        import jax
        import jax.numpy as jnp

        from vxl_jax.beacon.memory import bucket
        from vxl_jax.infer import core, engine
        from vxl_jax.infer.decode import decode_chunk
        from vxl_jax.infer.sampling import SamplingParams

        i32 = jnp.int32
        mem = self.memory(slots)
        if step == "windows":
            n, fpw, S = core.FRAME_CALL_WINDOWS, self.cfg.beacon.frames_per_window, self.cfg.vision.image_size
            fn, static = engine._windows, {"ratios": (ratio,), "from_pixels": True, "keep": True}
            args = (self.state, mem, self._struct((n, 1, fpw, S, S, 3), jnp.uint8), self._struct((n, 1), i32),
                    self._struct((n,), i32))
            donate = (1,)
        elif step == "text":
            fn, static = engine._text_chunk, {"kind": "text"}
            T = bucket(PROMPT_AFTER, core.TEXT_BUCKET)
            args = (self.state, mem, self._struct((1, T), i32), self._struct((1,), i32))
            donate = (1,)
        elif step == "decode":
            V = self.cfg.lm.vocab_size
            fn = decode_chunk
            static = {"params": SamplingParams(), "chunk": core.DECODE_CHUNK, "return_logits": False,
                      "feed": engine._text_chunk}
            args = (self.state, mem, self._struct((1, V), jnp.float32), self._struct((1, V), jnp.bool_),
                    self._struct((1, 2), jnp.uint32), self._struct((V,), jnp.bool_), self._struct((1,), i32))
            donate = (1, 3)
        else:
            raise ValueError(f"unknown step {step!r}; steps are windows, text, decode")
        # Engine._traced only reads graphdef / mesh / rules from the engine
        owner = types.SimpleNamespace(graphdef=self.graphdef, mesh=self.mesh, rules=self.rules)
        traced = engine.Engine._traced(owner, fn, static)
        t0 = time.perf_counter()
        r = mem_row(jax.jit(traced, donate_argnums=donate).lower(*args).compile())
        return r, time.perf_counter() - t0


def largest_fitting(points, hbm: float):
    """points [(frames, total bytes)] of one step -> (bytes per frame, largest frames with total <= hbm GiB)."""
    (f0, t0), (f1, t1) = points[0], points[-1]
    slope = (t1 - t0) / (f1 - f0)
    if slope <= 0:
        return slope, None
    return slope, int(f0 + (hbm * GiB - t0) / slope)


def run_infer(a, slices, steps, frames_list):
    from vxl_jax.runtime import sharding as sh
    from vxl_jax.config import VideoXLConfig

    cfg = VideoXLConfig.from_yaml(a.config)
    results = {}
    for topo in slices:
        hbm = hbm_gib(topo)
        inf = InferenceSteps(cfg, topo, sh.parse_mesh(a.mesh))
        points = {s: [] for s in steps}
        for F in frames_list:
            slots = memory_slots(cfg, F, a.ratio, a.max_new)
            for s in steps:
                r, dt = inf.compile(s, slots, a.ratio)
                print_row(topo, s, F, r, hbm, dt)
                record(a.json, slice=topo, step=s, frames=F, slots=slots, mesh=a.mesh, **r, compile_s=dt)
                points[s].append((F, r["total"]))
        fit = None
        if not a.no_fit and len(frames_list) >= 2:
            per = {s: largest_fitting(p, hbm) for s, p in points.items()}
            limits = [f for _, f in per.values() if f is not None]
            best = min(limits) if limits else None
            print(f"  {topo}: per-chip bytes per frame " + ", ".join(f"{s} {v[0] / 1024:.0f} KiB" for s, v in per.items())
                  + (f"; largest frame count that fits (fitted line): {best}" if best else ""), flush=True)
            if best and not a.no_check:
                slots = memory_slots(cfg, best, a.ratio, a.max_new)
                worst = 0
                for s in steps:
                    r, dt = inf.compile(s, slots, a.ratio)
                    print_row(topo, s, best, r, hbm, dt)
                    record(a.json, slice=topo, step=s, frames=best, slots=slots, mesh=a.mesh, **r, compile_s=dt,
                           check=True)
                    worst = max(worst, r["total"])
                print(f"  check at {best} frames: largest step {worst / GiB:.2f} GiB of {hbm:.0f} "
                      f"({'fits' if worst / GiB <= hbm else 'does NOT fit'})", flush=True)
            fit = best
        results[topo] = {"points": points, "largest_frames": fit}
    return results


def main():
    a = _args()
    import jax

    train_frames = [int(x) for x in a.train.split(",") if x.strip()]
    steps = [s for s in a.steps_csv.split(",") if s.strip()]
    slices = [s for s in a.slices.split(",") if s.strip()]
    frames_list = [int(x) for x in a.frames.split(",") if x.strip()]
    print(f"7B steps compiled ahead of time (jax {jax.__version__}, TPU compiler; nothing allocated or run). "
          f"Per chip: arguments / temporaries / outputs not aliased to donated inputs / total.")
    print(f"train: {a.train_slice}, fsdp over every chip, batch 1 per chip, remat full, ratios 2/4/8/12/16, "
          f"prefix 32 + suffix 64 tokens; inference: mesh {a.mesh} on the inference rules, ratio {a.ratio}, "
          f"prompt {PROMPT_BEFORE} + video + {PROMPT_AFTER} tokens, room for {a.max_new} new tokens")
    print_header()
    if train_frames:
        run_train(a, train_frames)
    if steps and slices:
        run_infer(a, slices, steps, frames_list)
    print(f"\npeak host RSS of this process: {peak_rss_gib():.1f} GiB")


if __name__ == "__main__":
    main()
