"""Compile the ``pallas`` attention kernel for a TPU ahead of time (no TPU needed; nothing allocated).

Needs the ``[tpu]`` extra (jax[tpu] + libtpu). 7B-like heads (28 query heads, 4 KV heads, head dim
128) in bfloat16 over a 16k-slot memory: a prefill window (1440 + 180 rows, stacked memory read
with a layer index), one decoding row, the training form (forward + gradient: four kernels), a
CLIP-shaped call (head dim 64, not tiled by the kernel: the blocked path, no Mosaic kernel), and the
prefill for 2 sequences on 8 chips (data 2 x tensor 4). The kernel-or-interpret choice is made when
lowering, so this CPU host gets the TPU kernel. Prints the compile time, ``memory_analysis()`` per
chip and the number of Mosaic kernels in the compiled HLO. Compiled, not run.

    .venv-tpu/bin/python bench/pallas_tpu_compile.py [--topology v5p:2x2x2] [--only prefill,decode,...]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vxl_jax.runtime import sharding as sh
from vxl_jax.model.pallas_attention import pallas_attention

H, KV, D, LAYERS = 28, 4, 128, 28
CHUNK, MEM = 1440 + 180, 16384


def _cases(dt):
    sds = jax.ShapeDtypeStruct
    i32 = jnp.int32

    def prefill(q, k, v, valid, mk, mv, mem_len, layer):
        return pallas_attention(q, k, v, valid=valid, mem_k=mk, mem_v=mv, mem_len=mem_len, mem_layer=layer)

    def decode(q, k, v, mk, mv, mem_len, layer):
        return pallas_attention(q, k, v, mem_k=mk, mem_v=mv, mem_len=mem_len, mem_layer=layer)

    def grad(q, k, v, valid, mk, mv, mem_len, w):
        def loss(q, k, v, mk, mv):
            out = pallas_attention(q, k, v, valid=valid, mem_k=mk, mem_v=mv, mem_len=mem_len)
            return jnp.sum(out.astype(jnp.float32) * w)
        return jax.grad(loss, argnums=(0, 1, 2, 3, 4))(q, k, v, mk, mv)

    def clip(q, k, v):  # CLIP ViT-L: head dim 64, which the kernel does not tile: the blocked path
        return pallas_attention(q, k, v, causal=False)

    stacked = sds((LAYERS, 1, MEM, KV, D), dt)
    chunk = (sds((1, CHUNK, H, D), dt), sds((1, CHUNK, KV, D), dt), sds((1, CHUNK, KV, D), dt))
    return {
        "prefill": (prefill, (*chunk, sds((1, CHUNK), bool), stacked, stacked, sds((1,), i32), sds((), i32))),
        "decode": (decode, (sds((1, 1, H, D), dt), sds((1, 1, KV, D), dt), sds((1, 1, KV, D), dt), stacked, stacked,
                            sds((1,), i32), sds((), i32))),
        "grad": (grad, (*chunk, sds((1, CHUNK), bool), sds((1, MEM, KV, D), dt), sds((1, MEM, KV, D), dt),
                        sds((1,), i32), sds((1, CHUNK, H, D), jnp.float32))),
        "clip": (clip, tuple(sds((8, 577, 16, 64), dt) for _ in range(3))),
    }


def _sharded_prefill(devices, dt):
    """The prefill case for 2 sequences on a data 2 x tensor 4 mesh under the inference rules: the
    kernel runs per shard (one sequence, one KV head and its 7 query heads per chip)."""
    mesh = sh.inference_mesh({"data": 2, "tensor": 4}, devices=devices)

    def fn(*a):
        with sh.activation_sharding(mesh, "inference"):
            return pallas_attention(*a[:3], valid=a[3], mem_k=a[4], mem_v=a[5], mem_len=a[6], mem_layer=a[7])

    rows, mem = P("data", None, "tensor", None), P(None, "data", None, "tensor", None)
    shapes = [((2, CHUNK, H, D), dt, rows), ((2, CHUNK, KV, D), dt, rows), ((2, CHUNK, KV, D), dt, rows),
              ((2, CHUNK), bool, P("data", None)), ((LAYERS, 2, MEM, KV, D), dt, mem),
              ((LAYERS, 2, MEM, KV, D), dt, mem), ((2,), jnp.int32, P("data")), ((), jnp.int32, P())]
    return fn, [jax.ShapeDtypeStruct(s, t, sharding=NamedSharding(mesh, p)) for s, t, p in shapes]


def _gib(n):
    return f"{n / 2 ** 30:.3f} GiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="v5p:2x2x2")
    ap.add_argument("--only", default="prefill,decode,grad,clip,prefill_dp2_tp4")
    args = ap.parse_args()
    topo = topologies.get_topology_desc(topology_name=args.topology, platform="tpu")
    device = topo.devices[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    print(f"target: {args.topology} ({device.device_kind}), one chip (prefill_dp2_tp4: 8 chips); H={H} KV={KV} "
          f"Dh={D} chunk={CHUNK} memory={MEM} slots (x{LAYERS} layers stacked for prefill/decode), bfloat16")
    cases = _cases(jnp.bfloat16)
    print(f"{'case (per chip)':16} {'compile_s':>9} {'arguments':>12} {'outputs':>12} {'temporaries':>12}")
    for name in args.only.split(","):
        if name == "prefill_dp2_tp4":
            fn, shapes = _sharded_prefill(topo.devices[:8], jnp.bfloat16)
        else:
            fn, shapes = cases[name]
            shapes = [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding) for s in shapes]
        t0 = time.perf_counter()
        compiled = jax.jit(fn).trace(*shapes).lower().compile()
        dt = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        print(f"{name:16} {dt:9.1f} {_gib(mem.argument_size_in_bytes):>12} {_gib(mem.output_size_in_bytes):>12} "
              f"{_gib(mem.temp_size_in_bytes):>12}", flush=True)
        kernels = compiled.as_text().count('custom_call_target="tpu_custom_call"')
        print(f"{'':16} Mosaic kernels in the compiled HLO: {kernels}")


if __name__ == "__main__":
    main()
