"""Peak memory of convert_weights.py on a synthetic >= 1 B-parameter checkpoint in the released layout.

The checkpoint has the 7B's widest tensors (hidden 3584, MLP 18944, vocab 152064, full CLIP ViT-L/14-336)
but only a few decoder layers, so the peak RSS measured here is the 7B's: memory depends on the
largest tensor/block, not on the number of layers. It is written tensor by tensor (bf16, several
safetensors shards), converted in a subprocess under ``/usr/bin/time -v``, spot-checked, and deleted.

    python bench/convert_memory.py [--layers 2] [--workdir /tmp] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vxl_jax.config import CLIP_VIT_L14_336, LMConfig, from_hf_config, to_hf_config, vision_to_hf  # noqa: E402
from vxl_jax.convert import names as N  # noqa: E402
from vxl_jax.convert.convert import plan_shards  # noqa: E402
from vxl_jax.convert.writers import SafetensorsWriter  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
SIZE_7B_BF16 = 8.4e9 * 2  # released checkpoint ~8.4 B parameters in bf16 (docs/algorithm.md §1)
BLOCK = np.random.default_rng(0).normal(0, 0.02, size=1 << 22).astype(BF16)  # reused random values


def _rows(shape, name):
    """Deterministic pseudo-random content, produced in row blocks of <= 4M values."""
    total = int(np.prod(shape))
    row = int(np.prod(shape[1:])) if len(shape) > 1 else total
    per = max(1, BLOCK.size // row)
    n_rows = shape[0] if len(shape) > 1 else 1
    shift = hash(name) % 1024
    for a in range(0, n_rows, per):
        k = min(per, n_rows - a) * row
        yield np.roll(BLOCK, shift + a)[:k]


def build(folder: str, layers: int, shard_bytes: int, fmt: str = "safetensors") -> tuple[int, int]:
    lm = LMConfig(num_layers=layers)
    hf = to_hf_config(from_hf_config({**_lm_hf(lm), "model_type": "qwen2"}))
    hf["model_type"] = "qwen2"  # as the released config.json
    cfg = from_hf_config(hf, vision=CLIP_VIT_L14_336)
    table = N.build_table(cfg)
    shards = plan_shards([(n, e.torch_shape, BF16) for n, e in table.items()], shard_bytes)
    os.makedirs(folder)
    weight_map, total = {}, 0
    if fmt == "bin":  # torch.save needs one shard's tensors in memory (~shard size)
        import torch

        for i, shard in enumerate(shards):
            fname = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
            sd = {name: torch.from_numpy(np.concatenate(list(_rows(shape, name))).view(np.int16).reshape(shape))
                  .view(torch.bfloat16) for name, shape, _ in shard}
            torch.save(sd, os.path.join(folder, fname))
            total += sum(t.numel() * 2 for t in sd.values())
            weight_map.update({n: fname for n in sd})
            del sd
    for i, shard in enumerate(shards if fmt == "safetensors" else []):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        w = SafetensorsWriter(os.path.join(folder, fname), shard, metadata={"format": "pt"})
        for name, shape, _ in shard:
            w.write_parts(name, _rows(shape, name))
            weight_map[name] = fname
        total += w.nbytes
        w.close()
    index = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    with open(os.path.join(folder, index), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf, f)
    with open(os.path.join(folder, "vision_tower_config.json"), "w") as f:
        json.dump(vision_to_hf(cfg.vision), f)
    n_params = sum(int(np.prod(spec[1])) for shard in shards for spec in shard)
    return total, n_params


def _lm_hf(lm: LMConfig) -> dict:
    return {"vocab_size": lm.vocab_size, "hidden_size": lm.hidden_size, "intermediate_size": lm.intermediate_size,
            "num_hidden_layers": lm.num_layers, "num_attention_heads": lm.num_heads,
            "num_key_value_heads": lm.num_kv_heads, "rope_theta": lm.rope_theta, "rms_norm_eps": lm.rms_norm_eps,
            "bos_token_id": lm.bos_token_id, "eos_token_id": lm.eos_token_id}


def measure(src: str, dst: str, *extra: str) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, os.path.join(ROOT, "convert_weights.py"), "--src", src, "--dst", dst,
           "--quiet", *extra]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"conversion failed:\n{r.stderr[-3000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    peak = int(m.group(1)) * 1024 if m else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"peak_rss": peak, "wall_s": wall, "summary": json.loads(r.stdout)}


def spot_check(src: str, dst: str) -> float:
    """Max |diff| of a few converted slices against the source tensors (must be 0)."""
    from vxl_jax.convert.readers import Checkpoint
    from vxl_jax.convert.zarr_out import open_leaf

    ck = Checkpoint(src)
    worst = 0.0
    for name, path, layer, kind in [("model.layers.1.mlp.down_proj.weight", ("lm", "layers", "mlp", "down", "kernel"), 1,
                                     "linear"),
                                    ("model.layers.0.self_attn.q_proj.weight", ("lm", "layers", "attn", "q", "kernel"),
                                     0, "linear_heads")]:
        arr = open_leaf(os.path.join(dst, "params"), path)
        got = np.asarray(arr[layer].read().result()).astype(np.float32)
        ref = N.to_ours(kind, ck.read(name), got.shape).astype(np.float32)
        worst = max(worst, float(np.abs(got - ref).max()))
    arr = open_leaf(os.path.join(dst, "params"), ("lm", "lm_head"))
    got = np.asarray(arr[:, 100000:100010].read().result()).astype(np.float32)
    ref = ck.read("lm_head.weight", slice(100000, 100010)).T.astype(np.float32)
    return max(worst, float(np.abs(got - ref).max()))


def _exported_equal(src: str, back: str) -> str:
    """Compare a few tensors of the exported folder with the source, by name."""
    from vxl_jax.convert.readers import Checkpoint

    a, b = Checkpoint(src), Checkpoint(back)
    names = ["model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.beacon_k_proj.bias", "model.norm.weight",
             N.VISION_PREFIX + "embeddings.patch_embedding.weight"]
    same = all(np.array_equal(a.read(n).view(np.uint16), b.read(n).view(np.uint16)) for n in names)
    rows = slice(150000, 150064)
    same &= np.array_equal(a.read("lm_head.weight", rows).view(np.uint16), b.read("lm_head.weight", rows).view(np.uint16))
    return f"{same} ({len(names) + 1} checked; names {'match' if set(a.infos) == set(b.infos) else 'DIFFER'})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2, help="decoder layers (7B widths)")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--shard-gb", type=float, default=1.0)
    ap.add_argument("--format", choices=["safetensors", "bin"], default="safetensors",
                    help="source format (bin: pytorch_model-*.bin shards read with torch.load(mmap=True))")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="vxl_convert_bench_", dir=args.workdir)
    try:
        src, dst = os.path.join(work, "hf"), os.path.join(work, "out")
        t0 = time.perf_counter()
        nbytes, n_params = build(src, args.layers, int(args.shard_gb * (1 << 30)), args.format)
        t_build = time.perf_counter() - t0
        shards = len([f for f in os.listdir(src) if f.endswith((".safetensors", ".bin"))])
        res = measure(src, dst)
        err = spot_check(src, dst)
        back = os.path.join(work, "back")
        exp = measure(dst, back, "--to-torch")
        exported = _exported_equal(src, back)
        ratio = res["peak_rss"] / nbytes
        rate = nbytes / res["wall_s"]
        rows = [
            ("parameters", f"{n_params / 1e9:.3f} B"),
            (f"checkpoint (bf16, {args.format})", f"{nbytes / 1e9:.2f} GB in {shards} shards"),
            ("peak RSS of the conversion", f"{res['peak_rss'] / 1e9:.3f} GB"),
            ("peak RSS / checkpoint size", f"{ratio:.3f}"),
            ("conversion wall time", f"{res['wall_s']:.1f} s ({rate / 1e6:.0f} MB/s)"),
            ("spot check max|diff|", f"{err:g}"),
            ("--to-torch peak RSS", f"{exp['peak_rss'] / 1e9:.3f} GB (ratio {exp['peak_rss'] / nbytes:.3f})"),
            ("--to-torch wall time", f"{exp['wall_s']:.1f} s"),
            ("--to-torch tensors bit-equal to source", exported),
            ("build time (not measured)", f"{t_build:.1f} s"),
            ("7B extrapolation: checkpoint", f"{SIZE_7B_BF16 / 1e9:.1f} GB"),
            ("7B extrapolation: peak RSS", f"~{res['peak_rss'] / 1e9:.2f} GB (same widest tensors)"),
            ("7B extrapolation: ratio", f"~{res['peak_rss'] / SIZE_7B_BF16:.3f}"),
            ("7B extrapolation: time", f"~{SIZE_7B_BF16 / rate:.0f} s at the same rate"),
        ]
        w = max(len(r[0]) for r in rows)
        print(f"{'quantity':<{w}} | value")
        print("-" * w + "-|-" + "-" * 40)
        for k, v in rows:
            print(f"{k:<{w}} | {v}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
