"""Prefill cost of Video-XL compression vs number of frames, and the 7B memory estimate.

Part 1 (measured on this machine): for the tiny preset and a mid-size config, prefill wall time
(run, excluding compilation), compile time, kept KV slots, and the compiled memory of the window
step (``memory_analysis()``: arguments, temp, output) at several frame counts.

Part 2 (compiled, nothing allocated): the 7B config in bf16 at F frames, ratio 16. The window
step (8 windows per scan call, vision tower inside) and the suffix step are lowered with
``jax.ShapeDtypeStruct`` parameters and compiled for the local backend; the estimate is
bf16 parameters + KV memory + the step's temp (see estimate_7b). The largest F whose estimate fits 80 GB is solved from the
measured points (the growth is linear in F: the memory buffer and the scores over it).

    python bench/prefill_scaling.py                # everything (~15 min on 2 CPU cores)
    python bench/prefill_scaling.py --skip-7b      # part 1 only
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from vxl_jax.infer.api import VideoXL  # noqa: E402
from vxl_jax.config import VideoXLConfig  # noqa: E402
from vxl_jax.infer.engine import _text_chunk, _windows  # noqa: E402
from vxl_jax.beacon.memory import KVMemory  # noqa: E402
from vxl_jax.model import abstract_model, random_model  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
GB = 1 << 30


def mid_config() -> VideoXLConfig:
    tiny = VideoXLConfig.from_yaml(os.path.join(ROOT, "configs", "tiny.yaml"))
    return tiny.replace(
        vision=dataclasses.replace(tiny.vision, hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4),
        projector=dataclasses.replace(tiny.projector, in_features=256),
        lm=dataclasses.replace(tiny.lm, hidden_size=512, intermediate_size=1536, num_layers=4, num_heads=8,
                               num_kv_heads=2))


def measure(name: str, cfg: VideoXLConfig, frames_list, ratio: int):
    vx = VideoXL(cfg, random_model(cfg, seed=0))
    rng = np.random.default_rng(0)
    ids = np.concatenate([rng.integers(3, 400, 14), [-200], rng.integers(3, 400, 20)])
    rows = []
    for frames in frames_list:
        px = rng.normal(size=(frames, 3, 336, 336)).astype(np.float32)
        vx.prefill(ids, px, ratio=ratio)  # compile (cached by shape) + run
        t = time.perf_counter()
        res = vx.prefill(ids, px, ratio=ratio)
        run = time.perf_counter() - t
        comp = vx.engine.compile_s
        mems = vx.engine.compiled_memory()["windows"]
        peak = max(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
                   for m in mems)
        rows.append((name, frames, res.sizes["total"], run, run / frames * 1e3, comp, peak / 2**20,
                     max(m.temp_size_in_bytes for m in mems) / 2**20))
        del px
    return rows


def _compile_steps(cfg: VideoXLConfig, frames: int, ratio: int, windows_per_call: int, prompt):
    """memory_analysis() of the window step and the suffix step, compiled from abstract values."""
    graphdef, state = nnx.split(abstract_model(cfg))
    lm, b = cfg.lm, cfg.beacon
    n_windows = -(-frames * b.tokens_per_frame // b.window)
    slots = prompt[0] + n_windows * (b.window // ratio) + prompt[1] + 256
    mem = jax.eval_shape(lambda: KVMemory.empty(lm.num_layers, 1, slots, lm.num_kv_heads, lm.head_dim, jnp.bfloat16))
    sds = jax.ShapeDtypeStruct
    win = sds((windows_per_call, 1, b.frames_per_window, 3, 336, 336), jnp.bfloat16)
    step = jax.jit(lambda s, m, w, n, r: _windows(graphdef, s, m, w, n, r, ratios=(ratio,), from_pixels=True,
                                                  keep=True), donate_argnums=(1,))
    wm = step.lower(state, mem, win, sds((windows_per_call, 1), jnp.int32),
                    sds((windows_per_call,), jnp.int32)).compile().memory_analysis()
    text = jax.jit(lambda s, m, i, n: _text_chunk(graphdef, s, m, i, n, kind="text"))
    tm = text.lower(state, mem, sds((1, prompt[1]), jnp.int32), sds((1,), jnp.int32)).compile().memory_analysis()
    return wm, tm, slots


def estimate_7b(frames: int, ratio: int = 16, windows_per_call: int = 8, prompt=(14, 32)):
    """Peak-memory estimate (GiB) of 7B inference at ``frames`` frames, nothing allocated.

    XLA:CPU has no native bf16 matmul and upcasts bf16 weights to f32 (tens of GB of temp that a
    GPU never allocates), so the device estimate is built from parts: bf16 parameters (counted)
    + bf16 KV memory + the window step's temp from an fp32 compile (activations in fp32: an upper
    bound for bf16). The raw bf16-on-CPU compile is reported alongside.
    """
    cfg = VideoXLConfig.from_yaml(os.path.join(ROOT, "configs", "videoxl_7b.yaml"))
    t0 = time.perf_counter()
    wm16, tm16, slots = _compile_steps(cfg, frames, ratio, windows_per_call, prompt)
    cfg32 = cfg.with_runtime(param_dtype="float32", compute_dtype="float32")
    wm32, tm32, _ = _compile_steps(cfg32, frames, ratio, windows_per_call, prompt)
    compile_s = time.perf_counter() - t0
    lm = cfg.lm
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract_model(cfg), nnx.Param)))
    params = n_params * 2
    kv = 2 * lm.num_layers * slots * lm.num_kv_heads * lm.head_dim * 2
    pixels = windows_per_call * cfg.beacon.frames_per_window * 3 * 336 * 336 * 2
    temp = max(wm32.temp_size_in_bytes, tm32.temp_size_in_bytes)
    total = lambda m: m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes  # noqa: E731,E501
    return {"frames": frames, "slots": slots, "kv_memory_gb": kv / GB, "params_gb": params / GB,
            "temp_gb": temp / GB, "estimate_gb": (params + kv + pixels + temp) / GB,
            "cpu_bf16_compiled_gb": max(total(wm16), total(tm16)) / GB, "compile_s": compile_s}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=int, default=8)
    ap.add_argument("--tiny-frames", default="20,100,400")
    ap.add_argument("--mid-frames", default="20,100")
    ap.add_argument("--frames-7b", default="2048,4096,8192")
    ap.add_argument("--skip-7b", action="store_true")
    ap.add_argument("--skip-measure", action="store_true")
    args = ap.parse_args()
    print(f"backend: {jax.default_backend()}, devices: {jax.device_count()}", flush=True)
    if not args.skip_measure:
        rows = measure("tiny", VideoXLConfig.from_yaml(os.path.join(ROOT, "configs", "tiny.yaml")),
                       [int(x) for x in args.tiny_frames.split(",")], args.ratio)
        rows += measure("mid", mid_config(), [int(x) for x in args.mid_frames.split(",")], args.ratio)
        print(f"\nPrefill at ratio {args.ratio} (prompt 14 + 20 text tokens; run excludes compilation)")
        print(f"{'config':>6} {'frames':>7} {'kept KV':>8} {'run s':>8} {'ms/frame':>9} {'compile s (cum)':>16} "
              f"{'window step MiB':>16} {'temp MiB':>9}")
        for r in rows:
            print(f"{r[0]:>6} {r[1]:>7} {r[2]:>8} {r[3]:>8.2f} {r[4]:>9.2f} {r[5]:>16.1f} {r[6]:>16.1f} {r[7]:>9.1f}")
    if not args.skip_7b:
        print("\n7B (bf16, ratio 16) compiled estimates, nothing allocated:")
        print(f"{'frames':>7} {'slots':>7} {'params GiB':>11} {'KV mem GiB':>11} {'temp GiB':>9} "
              f"{'estimate GiB':>13} {'(bf16 on CPU)':>14} {'compile s':>10}")
        pts = []
        for f in [int(x) for x in args.frames_7b.split(",")]:
            e = estimate_7b(f)
            pts.append(e)
            print(f"{e['frames']:>7} {e['slots']:>7} {e['params_gb']:>11.2f} {e['kv_memory_gb']:>11.2f} "
                  f"{e['temp_gb']:>9.2f} {e['estimate_gb']:>13.2f} {e['cpu_bf16_compiled_gb']:>14.2f} "
                  f"{e['compile_s']:>10.1f}")
        if len(pts) >= 2:
            f = np.array([p["frames"] for p in pts], float)
            y = np.array([p["estimate_gb"] for p in pts])
            slope, icpt = np.polyfit(f, y, 1)
            limit = 80e9 / GB
            print(f"\npeak estimate ~= {icpt:.2f} GiB + {slope * 1000:.3f} GiB per 1000 frames "
                  f"-> largest frame count under 80 GB ({limit:.1f} GiB): {int((limit - icpt) / slope)}")


if __name__ == "__main__":
    main()
