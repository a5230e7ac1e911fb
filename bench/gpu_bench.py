"""GPU figures for a 7B-shaped Video-XL in bf16: prefill time, model FLOPs utilisation, decode ms/token,
peak device memory (issue 9 item 5; run by bench/gpu_check.sh).

A random model with the released architecture (configs/videoxl_7b.yaml: CLIP ViT-L/14-336 + Qwen2-7B,
bf16 parameters and compute), its parameters drawn on the device. For each frame count (default 256 and
2048, ratio 16): random uint8 frames [F, 336, 336, 3], a 14-token prefix and a 20-token question,

* prefill: the first call (compile + run) and one steady call (``vx.stats['run_s']`` and wall);
* MFU: the analytic model FLOPs of that prefill (CLIP layers up to the selected one, projector, the
  LLM over visual tokens + beacons + text, attention over the filled memory; see :func:`prefill_flops`)
  / steady wall / the device's dense bf16 peak (``--peak-tflops`` to override the table);
* decode: greedy tokens from the saved video memory, stop ids off; ms/token = (wall of 1 + N tokens -
  wall of 1 token) / N, both compiled beforehand;
* peak device memory: ``jax.devices()[0].memory_stats()['peak_bytes_in_use']`` after each frame count
  (a running peak: counts run in increasing order), and the parameters' bytes.

``--bf16-ids GOLDEN_DIR``: the golden tiny checkpoint converted to bf16, greedy ids of its video cases on
the default device (the GPU) against the same on the CPU backend (exit 1 on a mismatch).

    python bench/gpu_bench.py                        # 7B-shaped, 256 and 2048 frames (GPU, ~80 GB class)
    python bench/gpu_bench.py --frames 256 --decode-tokens 32
    python bench/gpu_bench.py --tiny                 # tiny config, runs anywhere (CPU: a smoke run)
    python bench/gpu_bench.py --bf16-ids ../shared/golden
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from vxl_jax.infer.api import VideoXL  # noqa: E402
from vxl_jax.config import VideoXLConfig  # noqa: E402
from vxl_jax.model import abstract_model  # noqa: E402

PREFIX, SUFFIX = 14, 20
# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity), matched against device_kind.
PEAK_BF16_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
                    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.0)]


def bench_config(tiny: bool, dtype: str, attention: str) -> VideoXLConfig:
    name = "tiny.yaml" if tiny else "videoxl_7b.yaml"
    cfg = VideoXLConfig.from_yaml(os.path.join(ROOT, "configs", name))
    return cfg.with_runtime(param_dtype=dtype, compute_dtype=dtype, attention=attention)


def device_random_model(cfg: VideoXLConfig, seed: int = 0, std: float = 0.02):
    """Random parameters drawn on the default device (a 7B in bf16 in seconds; numpy would take minutes).
    Norm scales 1 + N(0, std), everything else N(0, std), as :func:`vxl_jax.model.random_model`."""
    graphdef, abstract = nnx.split(abstract_model(cfg))

    @jax.jit
    def draw(root):  # one compiled program for every parameter
        counter = iter(range(1 << 30))

        def fill(path, x):
            name = "/".join(str(p.key) for p in path if hasattr(p, "key"))
            offset = 1.0 if ("norm" in name and name.endswith("scale")) else 0.0
            key = jax.random.fold_in(root, next(counter))
            return (offset + std * jax.random.normal(key, x.shape, jnp.float32)).astype(x.dtype)

        return jax.tree_util.tree_map_with_path(fill, abstract)

    return nnx.merge(graphdef, draw(jax.random.PRNGKey(seed)))


def prefill_flops(cfg: VideoXLConfig, frames: int, ratio: int, prefix: int = PREFIX, suffix: int = SUFFIX) -> float:
    """Analytic model FLOPs of one prefill (multiply-add = 2 FLOPs; causal attention counts the kept half)."""
    v, lm, b = cfg.vision, cfg.lm, cfg.beacon
    # CLIP: patch embedding, then the layers up to the selected hidden state (class token included)
    t = v.num_patches + 1
    clip_layer = 2 * t * (4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.intermediate_size) + 4 * t * t * v.hidden_size
    clip = 2 * v.num_patches * v.num_channels * v.patch_size ** 2 * v.hidden_size + v.layers_used * clip_layer
    # projector (mlp2x_gelu on every patch, before the 2x2 pool)
    proj = 2 * v.num_patches * (v.hidden_size * lm.hidden_size + lm.hidden_size ** 2)
    vision = frames * (clip + proj)

    d, kv = lm.hidden_size, lm.num_kv_heads * lm.head_dim
    per_token = 2 * (2 * d * d + 2 * d * kv + 3 * d * lm.intermediate_size)   # q, o, k, v, gate/up/down

    def attention(queries: int, before: int) -> float:  # each query sees `before` slots + the causal part
        return 4 * d * queries * (before + (queries + 1) / 2)

    llm = prefix * per_token + attention(prefix, 0)
    filled = prefix
    visual = frames * b.tokens_per_frame
    for start in range(0, visual, b.window):
        n = min(b.window, visual - start)
        tokens = n + n // ratio                                   # visual tokens + their beacons
        llm += tokens * per_token + attention(tokens, filled)
        filled += n // ratio                                      # only the beacons stay
    llm += suffix * per_token + attention(suffix, filled) + 2 * suffix * d * lm.vocab_size
    return float(vision + lm.num_layers * llm)


def peak_tflops(kind: str, dtype: str, override: float | None) -> float | None:
    if override:
        return override
    if dtype != "bfloat16":
        return None
    for name, tf in PEAK_BF16_TFLOPS:
        if name.lower() in kind.lower():
            return tf
    return None


def device_memory() -> dict:
    """{'peak': bytes, 'in_use': bytes} from the device's allocator, or the process's peak RSS on CPU."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {"peak": int(stats["peak_bytes_in_use"]), "in_use": int(stats.get("bytes_in_use", 0)), "kind": "device"}
    return {"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "in_use": 0, "kind": "host RSS"}


def tree_bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def run_frames(vx: VideoXL, frames: int, ratio: int, decode_tokens: int, rng) -> dict:
    vocab = vx.cfg.lm.vocab_size
    ids = np.concatenate([rng.integers(3, vocab - 1, PREFIX), [-200], rng.integers(3, vocab - 1, SUFFIX)])
    size = vx.cfg.vision.image_size
    video = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)

    t0 = time.perf_counter()
    vx.prefill(ids, video, ratio=ratio)
    first_s = time.perf_counter() - t0
    compile_s = vx.stats["compile_s"]
    t0 = time.perf_counter()
    res = vx.prefill(ids, video, ratio=ratio)
    prefill_s = time.perf_counter() - t0
    run_s = vx.stats["run_s"]
    kept = res.sizes["total"]

    question = rng.integers(3, vocab - 1, SUFFIX)

    def decode(n: int) -> float:
        t = time.perf_counter()
        out = vx.generate(question, None, memory=res.video_memory, max_new_tokens=n, stop_ids=[])
        assert len(out) == n
        return time.perf_counter() - t

    decode(1), decode(1 + decode_tokens)                         # compile both lengths
    one, many = min(decode(1) for _ in range(2)), min(decode(1 + decode_tokens) for _ in range(2))
    mem = device_memory()
    return {"frames": frames, "ratio": ratio, "kept_kv": kept, "first_call_s": first_s, "compile_s": compile_s,
            "prefill_s": prefill_s, "prefill_run_s": run_s, "decode_ms_per_token": 1e3 * (many - one) / decode_tokens,
            "peak_bytes": mem["peak"], "memory_kind": mem["kind"]}


def bf16_greedy_ids(golden_dir: str) -> int:
    """Greedy ids of the golden video cases, bf16, default device vs CPU backend -> number of mismatches."""
    import tempfile

    from safetensors.numpy import load_file

    from vxl_jax.convert.convert import convert

    cases = load_file(os.path.join(golden_dir, "cases.safetensors"))
    ids, px = cases["video.input_ids"][0], cases["video.frames_u8"].astype(np.float32) / 64.0 - 2.0
    cpu = jax.devices("cpu")[0]
    mismatches = 0
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "converted")
        convert(os.path.join(golden_dir, "tiny_videoxl"), out, dtype="bfloat16", progress=False)
        here = VideoXL.load(out, dtype="bfloat16")
        with jax.default_device(cpu):
            there = VideoXL.load(out, dtype="bfloat16")
        for ratio in (2, 16):
            a = here.generate(ids, px, ratio=ratio, max_new_tokens=6, stop_ids=[])
            with jax.default_device(cpu):
                b = there.generate(ids, px, ratio=ratio, max_new_tokens=6, stop_ids=[])
            same = np.array_equal(a, b)
            mismatches += not same
            print(f"bf16 greedy ids, video r{ratio}: {jax.devices()[0].platform} {a.tolist()} vs cpu {b.tolist()}"
                  f" -> {'equal' if same else 'DIFFERENT'} (the original's fp32 ids: "
                  f"{cases[f'video_r{ratio}.generated_ids'].tolist()})")
    return mismatches


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="configs/tiny.yaml and few frames (a smoke run, e.g. on CPU)")
    ap.add_argument("--frames", default=None, help="comma-separated frame counts (default 256,2048; --tiny 10,20)")
    ap.add_argument("--ratio", type=int, default=16)
    ap.add_argument("--decode-tokens", type=int, default=None, help="timed tokens (default 64; --tiny 8)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--attention", default="xla", help="runtime.attention backend (xla, cudnn, dot_product, ...)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by device kind)")
    ap.add_argument("--bf16-ids", metavar="GOLDEN_DIR", default=None,
                    help="only compare bf16 greedy ids of the golden cases, default device vs CPU")
    ap.add_argument("--json", default=None, help="also write the rows as JSON lines")
    a = ap.parse_args(argv)

    dev = jax.devices()[0]
    print(f"device: {dev.platform} {dev.device_kind} x{jax.device_count()}; jax {jax.__version__}", flush=True)
    if a.bf16_ids:
        return 1 if bf16_greedy_ids(a.bf16_ids) else 0

    frames = [int(f) for f in (a.frames or ("10,20" if a.tiny else "256,2048")).split(",")]
    decode_tokens = a.decode_tokens or (8 if a.tiny else 64)
    cfg = bench_config(a.tiny, a.dtype, a.attention)
    t0 = time.perf_counter()
    model = device_random_model(cfg)
    param_bytes = tree_bytes(nnx.state(model))
    jax.block_until_ready(nnx.state(model))
    vx = VideoXL(cfg, model)
    print(f"model: {'tiny' if a.tiny else '7B-shaped'} {a.dtype}, attention {a.attention}, "
          f"parameters {param_bytes / 2**30:.2f} GiB, drawn in {time.perf_counter() - t0:.1f} s", flush=True)
    peak = peak_tflops(dev.device_kind, a.dtype, a.peak_tflops)
    rng = np.random.default_rng(0)
    rows = []
    for f in sorted(frames):
        r = run_frames(vx, f, a.ratio, decode_tokens, rng)
        r["model_tflop"] = prefill_flops(cfg, f, a.ratio) / 1e12
        r["mfu"] = r["model_tflop"] / r["prefill_s"] / peak if peak else None
        rows.append(r)
        print("RESULT " + json.dumps(r), flush=True)

    print(f"\n| frames | ratio | kept KV | first call (compile + run) s | prefill s | model TFLOP | MFU "
          f"| decode ms/token | peak {rows[0]['memory_kind']} GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
        print(f"| {r['frames']} | {r['ratio']} | {r['kept_kv']} | {r['first_call_s']:.1f} ({r['compile_s']:.1f} compile) "
              f"| {r['prefill_s']:.2f} | {r['model_tflop']:.3g} | {mfu} | {r['decode_ms_per_token']:.2f} "
              f"| {r['peak_bytes'] / 2**30:.2f} |")
    print(f"(parameters {param_bytes / 2**30:.2f} GiB; MFU against {peak or 'unknown'} TFLOP/s dense {a.dtype})")
    if a.json:
        with open(a.json, "w") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
