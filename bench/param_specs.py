"""Print every parameter's shape, logical axes, PartitionSpec and per-device bytes for a mesh.

Nothing is allocated: the model is abstract (``jax.eval_shape``) and the mesh is made of fake CPU
devices (the device count is set before JAX is imported).

    python bench/param_specs.py                                  # 7B, fsdp on 1,8,1 and fsdp_tp on 1,2,4
    python bench/param_specs.py --preset inference --mesh 1,2,4 --dtype bfloat16
    python bench/param_specs.py --config configs/tiny.yaml --mesh 2,2,2 --summary-only
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _parse_mesh(s: str) -> tuple[int, int, int]:
    parts = tuple(int(x) for x in s.split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--mesh wants three positive sizes data,fsdp,tensor; got {s!r}")
    return parts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "videoxl_7b.yaml"))
    ap.add_argument("--preset", action="append", choices=["fsdp", "fsdp_tp", "inference"],
                    help="sharding preset (repeatable, paired with --mesh); default: fsdp and fsdp_tp")
    ap.add_argument("--mesh", action="append", type=_parse_mesh,
                    help="data,fsdp,tensor (repeatable); default: 1,8,1 for fsdp and 1,2,4 for fsdp_tp")
    ap.add_argument("--dtype", default=None, help="override the parameter dtype (e.g. float32, bfloat16)")
    ap.add_argument("--summary-only", action="store_true", help="print only the summary lines")
    args = ap.parse_args(argv)

    presets = args.preset or ["fsdp", "fsdp_tp"]
    meshes = args.mesh or ([(1, 8, 1), (1, 2, 4)] if not args.preset else [(1, 8, 1)])
    if len(meshes) == 1:
        meshes = meshes * len(presets)
    if len(presets) == 1:
        presets = presets * len(meshes)
    if len(meshes) != len(presets):
        ap.error("give one --mesh, or as many --mesh as --preset")

    n_dev = max(m[0] * m[1] * m[2] for m in meshes)
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={n_dev}").strip()
    sys.path.insert(0, str(ROOT))
    import jax
    import numpy as np

    from vxl_jax.runtime import sharding as sh
    from vxl_jax.config import VideoXLConfig
    from vxl_jax.model import abstract_model

    overrides = [f"model.runtime.param_dtype={args.dtype}"] if args.dtype else []
    cfg = VideoXLConfig.from_yaml(args.config, overrides)
    model = abstract_model(cfg)
    params = list(sh.iter_params(model))
    assert all(isinstance(v.get_value(), jax.ShapeDtypeStruct) for _, v in params)

    for preset, mesh_shape in zip(presets, meshes):
        devices = jax.devices()[: mesh_shape[0] * mesh_shape[1] * mesh_shape[2]]
        mesh = sh.make_mesh(mesh_shape, devices)
        table = sh.get_rules(preset)
        total = per_dev = replicated = 0
        n_params = 0
        rows = []
        for path, var in params:
            x = var.get_value()
            axes = var.get_metadata().get("out_sharding")
            spec = sh.logical_to_spec(axes, x.shape, table, mesh)
            nbytes = int(np.prod(x.shape)) * x.dtype.itemsize
            dev = sh.bytes_per_device(x.shape, x.dtype, spec, mesh)
            total += nbytes
            per_dev += dev
            n_params += int(np.prod(x.shape))
            if not sh.spec_is_sharded(spec, mesh):
                replicated += nbytes
            rows.append((path, "x".join(map(str, x.shape)), str(axes), str(spec), dev))
        print(f"\n## {args.config} | preset {preset} | {sh.describe(mesh)} | dtype {cfg.runtime.param_dtype}")
        if not args.summary_only:
            w = [max(len(r[i]) for r in rows) for i in range(4)]
            print(f"{'path':<{w[0]}}  {'shape':<{w[1]}}  {'logical axes':<{w[2]}}  {'spec':<{w[3]}}  bytes/device")
            for r in rows:
                print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:<{w[3]}}  {r[4]:>14,}")
        print(f"SUMMARY preset={preset} mesh={','.join(map(str, mesh_shape))} params={n_params:,} "
              f"total={total:,} B ({total / 2**30:.2f} GiB) per_device={per_dev:,} B ({per_dev / 2**30:.2f} GiB) "
              f"total/devices={total / mesh.devices.size / 2**30:.2f} GiB replicated={replicated / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
