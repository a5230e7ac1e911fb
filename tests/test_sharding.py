"""Logical-axis sharding: rules resolution, fallbacks, and sharded forward == unsharded forward.

Uses the 8 fake CPU devices of conftest.py and the tiny config (LM D=64, H=4, KV=2, Dh=16, V=512;
CLIP C=32, 4 heads). Every sharded run goes through ``jax.jit`` on ``nnx.split`` state.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from vxl_jax.runtime import sharding as sh
from vxl_jax.beacon.memory import KVMemory
from vxl_jax.model import abstract_model, random_model

B, T, M, F = 8, 12, 10, 2  # batch, chunk length, memory slots, frames


@pytest.fixture(scope="module")
def setup(tiny_cfg):
    """Model, split state, inputs and the unsharded (single-device) reference outputs."""
    model = random_model(tiny_cfg, seed=3, std=0.05)
    graphdef, state = nnx.split(model)
    lm = tiny_cfg.lm
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, lm.vocab_size, (B, T)), jnp.int32)
    pixels = jnp.asarray(rng.normal(0, 1, (F, 3, 336, 336)), jnp.float32)
    L, KV, Dh = lm.num_layers, lm.num_kv_heads, lm.head_dim
    mem_len = jnp.asarray(rng.integers(1, M + 1, (B,)), jnp.int32)
    mem = KVMemory(
        k=jnp.asarray(rng.normal(0, 1, (L, B, M, KV, Dh)), jnp.float32),
        v=jnp.asarray(rng.normal(0, 1, (L, B, M, KV, Dh)), jnp.float32),
        length=mem_len, n_prefix=jnp.zeros((B,), jnp.int32), n_beacons=mem_len, n_text=jnp.zeros((B,), jnp.int32),
    )
    beacon_mask = jnp.asarray(rng.random((B, T)) < 0.3)
    x = jnp.asarray(rng.normal(0, 1, (B, T, lm.hidden_size)), jnp.float32)

    def text(s, ids):
        return nnx.merge(graphdef, s).text_logits(ids)

    def frames(s, pixels):
        return nnx.merge(graphdef, s).encode_frames(pixels)

    def with_memory(s, x, beacon_mask, mem):
        """x [B, T, D] over memory [L, B, M, KV, Dh] -> (hidden [B,T,D], k_pre [L,B,T,KV,Dh], v)."""
        positions = mem.length[:, None] + jnp.arange(x.shape[1], dtype=jnp.int32)[None]
        return nnx.merge(graphdef, s).lm(x, positions=positions, beacon_mask=beacon_mask, mem_k=mem.k,
                                         mem_v=mem.v, mem_len=mem.length)

    def forward(s, ids, pixels, x, beacon_mask, mem):
        """All three paths in one program (one compile per mesh): (logits, frames, hidden, k, v)."""
        return (text(s, ids), frames(s, pixels), *with_memory(s, x, beacon_mask, mem))

    inputs = dict(ids=ids, pixels=pixels, mem=mem, beacon_mask=beacon_mask, x=x)
    ref = jax.jit(forward)(state, ids, pixels, x, beacon_mask, mem)
    return dict(model=model, state=state, inputs=inputs, forward=forward, ref=ref)


CASES = [
    ("fsdp", (1, 4, 2)),
    ("fsdp", (1, 8, 1)),
    ("fsdp_tp", (2, 2, 2)),  # weights placed as fsdp; KV memory heads over tensor in addition
    ("inference", (1, 2, 4)),
]


@pytest.mark.parametrize("preset,mesh_shape", CASES, ids=[f"{p}-{'x'.join(map(str, m))}" for p, m in CASES])
def test_sharded_forward_equals_unsharded(setup, preset, mesh_shape):
    mesh = sh.make_mesh(mesh_shape)
    assert tuple(mesh.shape.values()) == mesh_shape and mesh.axis_names == sh.MESH_AXES
    state, inp, forward, ref = setup["state"], setup["inputs"], setup["forward"], setup["ref"]
    shardings = sh.param_shardings(state, mesh, preset)
    placed = jax.device_put(state, shardings)

    # Not vacuous: the placed arrays really are split over devices.
    n_sharded = 0
    for path, var in sh.iter_params(placed):
        arr = var[...]
        assert arr.sharding.mesh.shape == mesh.shape, path
        if not arr.sharding.is_fully_replicated:
            n_sharded += 1
            assert arr.addressable_shards[0].data.size < arr.size, path
    assert n_sharded >= 20, n_sharded
    q = placed["lm"]["layers"]["attn"]["q"]["kernel"][...]
    assert not q.sharding.is_fully_replicated

    ids = jax.device_put(inp["ids"], sh.batch_sharding(mesh, inp["ids"].shape, preset))
    pixels = jax.device_put(inp["pixels"], sh.logical_sharding(mesh, ("frames", None, None, None),
                                                               inp["pixels"].shape, preset))
    mem = jax.device_put(inp["mem"], sh.memory_shardings(inp["mem"], mesh, preset))
    x = jax.device_put(inp["x"], sh.batch_sharding(mesh, inp["x"].shape, preset))
    bm = jax.device_put(inp["beacon_mask"], sh.batch_sharding(mesh, inp["beacon_mask"].shape, preset))
    if preset == "fsdp_tp":
        assert mem.k.sharding.spec == P(None, ("data", "fsdp"), None, "tensor")
    outs = jax.jit(forward, in_shardings=(shardings, ids.sharding, pixels.sharding, x.sharding, bm.sharding,
                                          sh.memory_shardings(mem, mesh, preset)))(placed, ids, pixels, x, bm, mem)
    names = ("text_logits", "encode_frames", "lm hidden over memory", "k_pre", "v")
    for name, got, want in zip(names, outs, ref):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5, err_msg=name)


def test_specs_of_known_params(tiny_cfg):
    """Exact specs on (1,4,2) for the fsdp preset; q/k/v head-split kernels [L, D, H, Dh]."""
    mesh = sh.make_mesh((1, 4, 2))
    specs = sh.param_specs(abstract_model(tiny_cfg), mesh, "fsdp")
    got = {p: v.get_value() for p, v in sh.iter_params(specs)}
    assert got["lm/layers/attn/q/kernel"] == P(None, "fsdp", "tensor")
    assert got["lm/layers/attn/k/kernel"] == P(None, "fsdp", "tensor")  # 2 KV heads / tensor 2
    assert got["lm/layers/attn/o/kernel"] == P(None, "tensor", None, "fsdp")
    assert got["lm/layers/mlp/down/kernel"] == P(None, "tensor", "fsdp")
    assert got["lm/embed"] == P("tensor", "fsdp")
    assert got["lm/lm_head"] == P("fsdp", "tensor")
    assert got["lm/layers/input_norm/scale"] == P()
    assert got["vision/layers/fc1/kernel"] == P(None, "fsdp", "tensor")


def test_divisibility_fallback_and_no_axis_reuse(tiny_cfg):
    mesh = sh.make_mesh((1, 2, 4))
    # 2 KV heads cannot be split 4 ways: replicated, while the 4 query heads are split.
    assert sh.logical_to_spec(("kv_heads",), (2,), "fsdp", mesh) == P()
    assert sh.logical_to_spec(("heads",), (4,), "fsdp", mesh) == P("tensor")
    specs = {p: v.get_value() for p, v in sh.iter_params(sh.param_specs(abstract_model(tiny_cfg), mesh, "fsdp"))}
    assert specs["lm/layers/attn/k/kernel"] == P(None, "fsdp")
    assert specs["lm/layers/attn/beacon_v/bias"] == P()
    assert specs["lm/layers/attn/q/kernel"] == P(None, "fsdp", "tensor")
    # A tuple rule drops only the axes that do not divide: batch 2 on (data=2, fsdp=2) -> data only.
    mesh222 = sh.make_mesh((2, 2, 2))
    assert sh.logical_to_spec(("batch", None), (2, 5), "fsdp", mesh222) == P("data")
    assert sh.logical_to_spec(("batch", None), (8, 5), "fsdp", mesh222) == P(("data", "fsdp"))
    # Two dims mapped to the same mesh axis: the first one wins, the second is replicated.
    rules = (("embed", "fsdp"), ("mlp", "fsdp"))
    assert sh.logical_to_spec(("embed", "mlp"), (8, 8), rules, mesh) == P("fsdp")
    assert sh.logical_to_spec(("mlp", "embed"), (8, 8), rules, mesh) == P("fsdp")
    # Fallback candidates: repeated names are tried in order.
    rules = (("heads", "tensor"), ("heads", "fsdp"))
    assert sh.logical_to_spec(("heads",), (6,), rules, mesh) == P("fsdp")
    # Inference preset: 2D model parallel, no weight gathering on the embed dim.
    spec = sh.logical_to_spec(("embed", "mlp"), (64, 128), "inference", mesh)
    assert spec == P(None, ("tensor", "fsdp"))
    # Every spec in every preset uses each mesh axis at most once.
    for preset in sh.PRESETS:
        for _, s in sh.iter_params(sh.param_specs(abstract_model(tiny_cfg), mesh, preset)):
            flat = [a for e in s.get_value() for a in (e if isinstance(e, tuple) else (e,)) if a]
            assert len(flat) == len(set(flat)), (preset, s)


def test_rules_errors(tiny_cfg):
    mesh = sh.make_mesh((1, 8, 1))
    with pytest.raises(ValueError, match="no sharding rule.*'bogus'|'bogus'.*no sharding rule"):
        sh.logical_to_spec(("bogus",), (8,), "fsdp", mesh)
    with pytest.raises(ValueError, match="unknown sharding preset"):
        sh.get_rules("megatron")
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        sh.get_rules((("embed", "model"),))
    with pytest.raises(ValueError, match="do not match shape"):
        sh.logical_to_spec(("embed",), (8, 8), "fsdp", mesh)
    # every logical name used by the model's parameters has a rule in every preset
    names = {a for _, v in sh.iter_params(abstract_model(tiny_cfg)) for a in (v.get_metadata()["out_sharding"] or ()) if a}
    assert names <= set(sh.PARAM_AXES)
    for preset in sh.PRESETS:
        assert set(sh.PARAM_AXES) | set(sh.ACTIVATION_AXES) <= set(sh.get_rules(preset)), preset


def test_make_mesh_config_and_errors():
    from vxl_jax.config import ConfigError, MeshConfig

    mesh = sh.make_mesh(MeshConfig(data=2, fsdp=-1, tensor=1))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ConfigError):
        sh.make_mesh((3, 1, 1))
    small = sh.make_mesh((1, 2, 1), devices=jax.devices()[:2])
    assert small.devices.size == 2


def test_shard_model_and_abstract_targets(tiny_cfg):
    mesh = sh.make_mesh((1, 4, 2))
    model = sh.shard_model(random_model(tiny_cfg, seed=1), mesh, "fsdp")
    k = model.lm.layers.attn.q.kernel[...]
    assert k.sharding.spec == P(None, "fsdp", "tensor")
    ab = sh.abstract_sharded_state(abstract_model(tiny_cfg), mesh, "fsdp")
    leaf = ab["lm"]["embed"].get_value()
    assert isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding.spec == P("tensor", "fsdp")
    # per-device bytes of the lm_head [64, 512] fp32 split 4 x 2
    assert sh.bytes_per_device((64, 512), jnp.float32, P("fsdp", "tensor"), mesh) == 64 * 512 * 4 // 8


def test_maybe_initialize_distributed(monkeypatch):
    from vxl_jax.runtime.distributed import maybe_initialize

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    assert maybe_initialize(env={}) is False
    assert maybe_initialize(env={"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}) is False
    assert maybe_initialize(env={"OMPI_COMM_WORLD_SIZE": "1"}) is False
    assert maybe_initialize(env={"JAX_COORDINATOR_ADDRESS": "h:1", "VXL_DISTRIBUTED": "0"}) is False
    assert calls == []
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    assert maybe_initialize(env=env) is True
    assert calls[-1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}
    assert maybe_initialize(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}) is True
    assert calls[-1] == {}  # jax's own SLURM auto-detection fills in the rest
    assert maybe_initialize(True, env={}) is True
    assert len(calls) == 3


def test_param_specs_bench_smoke(monkeypatch, capsys):
    """bench/param_specs.py on the tiny config: one row per parameter and a consistent summary."""
    import importlib.util
    import pathlib
    import re

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "param_specs.py"
    spec = importlib.util.spec_from_file_location("param_specs_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--config", str(path.parents[1] / "configs" / "tiny.yaml"), "--preset", "fsdp",
                     "--mesh", "1,4,2"]) == 0
    out = capsys.readouterr().out
    assert "lm/layers/attn/q/kernel" in out and "P(None, 'fsdp', 'tensor')" in out
    m = re.search(r"SUMMARY .* params=([\d,]+) total=([\d,]+) B .* per_device=([\d,]+) B", out)
    n, total, per_dev = (int(g.replace(",", "")) for g in m.groups())
    assert total == 4 * n and total / 8 <= per_dev < total
