"""One training step on the 8-device fake mesh (fsdp=4 x tensor=2, and fsdp=8) gives the same loss,
gradient norm and updated parameters as on a single device (fp32), with gradient accumulation."""

import jax
import numpy as np
import pytest
from flax import nnx

from vxl_jax.runtime import sharding as sh
from vxl_jax.config import VideoXLConfig
from vxl_jax.model import random_model
from vxl_jax.train import optim
from vxl_jax.train import step as st
from vxl_jax.train.config import TrainConfig

ACCUM, B, F, P, S = 2, 8, 12, 16, 24  # 12 frames -> 2 windows of 10 (second one partial)


def make_batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    V, H = cfg.lm.vocab_size, cfg.vision.image_size
    shape = (ACCUM, B)
    prefix_len = rng.integers(4, P + 1, shape).astype(np.int32)
    suffix_len = rng.integers(6, S + 1, shape).astype(np.int32)
    num_frames = rng.integers(0, F + 1, shape).astype(np.int32)
    prefix_len[num_frames == 0] = 0  # text-only records: everything in the suffix
    pid = rng.integers(3, V, shape + (P,)).astype(np.int32)
    sid = rng.integers(3, V, shape + (S,)).astype(np.int32)
    plab = np.where(rng.random(shape + (P,)) < 0.5, rng.integers(3, V, shape + (P,)), -100).astype(np.int32)
    slab = np.where(rng.random(shape + (S,)) < 0.7, rng.integers(3, V, shape + (S,)), -100).astype(np.int32)
    px = rng.normal(0, 1, shape + (F, 3, H, H)).astype(np.float32)
    px *= (np.arange(F) < num_frames[..., None])[..., None, None, None]
    return dict(prefix_ids=pid, prefix_labels=plab, prefix_len=prefix_len, pixels=px, num_frames=num_frames,
                suffix_ids=sid, suffix_labels=slab, suffix_len=suffix_len)


@pytest.fixture(scope="module")
def setup():
    cfg = VideoXLConfig.from_yaml("configs/train_tiny.yaml")
    # eps=1e-4: Adam divides by sqrt(v) + eps, which would blow fp32 reduction-order noise in near-zero
    # gradients up to O(lr) parameter differences with the default 1e-8
    tcfg = TrainConfig(steps=10, batch_size=B, accum=ACCUM, lr=1e-2, warmup_ratio=0.0, weight_decay=0.1,
                       clip_norm=0.5, eps=1e-4)
    return cfg, tcfg, make_batch(cfg)


def run_steps(cfg, tcfg, batch, mesh_shape, n_steps=2):
    devices = jax.devices()[: int(np.prod(mesh_shape))]
    mesh = sh.make_mesh(mesh_shape, devices)
    tx = optim.make_optimizer(tcfg)
    graphdef, state, shd = st.init_state(random_model(cfg, seed=1, std=0.05), tx, optim.trainable_filter("all"),
                                         mesh, seed=3)
    trainer = st.Trainer(graphdef, cfg, tx, optim.lr_schedule(tcfg), (2, 4, 8), mesh, shd).compile()
    gb = st.to_global(batch, mesh, B, trainer.rules)
    metrics = []
    for _ in range(n_steps):
        state, m = trainer.train_step(state, gb)
        metrics.append(jax.device_get(m))
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(state["params"]))
    return metrics, params, state


@pytest.fixture(scope="module")
def reference(setup):
    return run_steps(*setup, (1, 1, 1))


@pytest.mark.parametrize("mesh_shape", [(1, 4, 2), (1, 8, 1)])
def test_sharded_step_matches_single_device(setup, reference, mesh_shape):
    ref_m, ref_p, _ = reference
    m, p, state = run_steps(*setup, mesh_shape)
    # the state really is sharded: some parameter split over fsdp
    specs = [x.sharding.spec for x in jax.tree.leaves(state["params"])]
    assert any("fsdp" in str(s) for s in specs)
    for a, b in zip(ref_m, m):
        assert int(a["n_tokens"]) == int(b["n_tokens"]) > 0
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
        np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-4)
    assert ref_m[1]["loss"] < ref_m[0]["loss"]  # the step does something
    flat_r, flat_p = jax.tree.leaves(ref_p), jax.tree.leaves(p)
    for r, q in zip(flat_r, flat_p):
        np.testing.assert_allclose(q, r, atol=1e-6, rtol=1e-5)


def test_build_trainer_uses_the_runtime_sharding_rules(setup):
    """The rules preset is chosen once (``model.runtime.sharding``) and used for state, batch and activations."""
    cfg, tcfg, _ = setup
    mesh = sh.make_mesh((1, 4, 2), jax.devices()[:8])
    for rules in ("fsdp", "inference"):
        model = random_model(cfg.with_runtime(sharding=rules), seed=1, std=0.05)
        trainer, state = st.build_trainer(model, tcfg, mesh, (2, 4, 8))
        assert trainer.rules == rules and trainer.cfg.runtime.sharding == rules
        want = jax.tree.leaves(sh.param_specs(state["params"], mesh, rules))
        got = [x.sharding.spec for x in jax.tree.leaves(state["params"])]
        assert got == want
    # the two presets really place the weights differently on this mesh
    assert jax.tree.leaves(sh.param_specs(state["params"], mesh, "fsdp")) != want
