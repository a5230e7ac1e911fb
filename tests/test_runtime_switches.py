"""Runtime switches change how the model runs, never what it computes: attention backend, remat
policy, query blocking; bf16 compute stays close to fp32. Each switch is also shown to be taken (not
ignored) on every path that reads it from ``model.cfg.runtime``: the plain LM, the text step over a memory,
the window scan (plain and lean), and CLIP — the backend's function is the one called, the remat policy is
the one in the traced program, blocking and bf16 show in the program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vxl_jax.beacon.lean import compress_windows_lean
from vxl_jax.beacon.memory import KVMemory
from vxl_jax.beacon.text import text_step
from vxl_jax.beacon.windows import compress_windows
from vxl_jax.model import attention, random_model, scan

BACKEND_FUNCTIONS = {"xla": "blocked", "pallas": "pallas", "reference": "dense", "dot_product": "sdpa:xla",
                     "cudnn": "sdpa:cudnn"}


def _eqns(jaxpr):
    """Every equation of a jaxpr, nested ones (scan / cond / checkpoint bodies) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def _paths(model):
    """{path name: zero-argument function} for each place a runtime switch must reach (traced, not run)."""
    cfg, B = model.cfg, 1
    mem = KVMemory.empty(cfg.lm.num_layers, B, 512, cfg.lm.num_kv_heads, cfg.lm.head_dim, model.compute_dtype)
    window = cfg.beacon.window
    feats = jnp.zeros((1, B, window, cfg.lm.hidden_size), model.compute_dtype)
    n_valid, ratio_idx = jnp.full((1, B), window, jnp.int32), jnp.zeros((1,), jnp.int32)
    x = jnp.zeros((B, 8, cfg.lm.hidden_size), model.compute_dtype)
    scan_kw = dict(ratios=(8,), from_pixels=False)
    return {
        "text_logits": lambda: model.text_logits(jnp.ones((B, 8), jnp.int32)),
        "text_step": lambda: text_step(model, mem, x, jnp.full((B,), 8, jnp.int32), kind="text"),
        "windows": lambda: compress_windows(model, mem, feats, n_valid, ratio_idx, **scan_kw),
        "windows_lean": lambda: compress_windows_lean(model, mem, feats, n_valid, ratio_idx, **scan_kw),
        "vision": lambda: model.vision_features(jnp.zeros((1, 3, cfg.vision.image_size, cfg.vision.image_size))),
    }


@pytest.fixture
def backend_calls(monkeypatch):
    """Replace each attention backend's function with a recorder (returns zeros of the query's shape)."""
    calls = []

    def recorder(name):
        def fake(q, *args, implementation=None, **kwargs):
            calls.append(name if implementation is None else f"{name}:{implementation}")
            return jnp.zeros_like(q)
        return fake

    for attr, name in (("blocked_attention", "blocked"), ("pallas_attention", "pallas"),
                       ("dense_attention", "dense"), ("sdpa_attention", "sdpa")):
        monkeypatch.setattr(attention, attr, recorder(name))
    return calls


@pytest.mark.parametrize("backend", sorted(BACKEND_FUNCTIONS))
def test_every_path_calls_the_configured_backend(tiny_cfg, backend_calls, backend):
    dtype = "bfloat16" if backend == "cudnn" else "float32"
    model = random_model(tiny_cfg.with_runtime(attention=backend, param_dtype=dtype, compute_dtype=dtype), seed=0)
    for name, fn in _paths(model).items():
        backend_calls.clear()
        jax.make_jaxpr(fn)()
        assert backend_calls and set(backend_calls) == {BACKEND_FUNCTIONS[backend]}, (name, backend_calls)


@pytest.mark.parametrize("policy", ["none", "full", "minimal", "save_qkv_proj"])
def test_every_path_runs_the_configured_remat_policy(tiny_cfg, monkeypatch, policy):
    made, real = {}, scan.remat_policy

    def recording_policy(name):
        made[name] = real(name)
        return made[name]

    monkeypatch.setattr(scan, "remat_policy", recording_policy)
    model = random_model(tiny_cfg.with_runtime(remat=policy), seed=0)
    for name, fn in _paths(model).items():
        made.clear()
        eqns = list(_eqns(jax.make_jaxpr(fn)().jaxpr))
        applied = [e.params["policy"] for e in eqns if e.primitive.name in ("checkpoint", "remat2")]
        assert set(made) == {policy}, (name, made)
        if policy == "none":
            assert not applied, name
        else:
            assert applied and all(p is made[policy] for p in applied), (name, applied)


def _logits(cfg, ids):
    model = random_model(cfg, seed=5, std=0.1)
    return np.asarray(model.text_logits(ids))


@pytest.fixture(scope="module")
def ids():
    return jnp.asarray(np.random.default_rng(0).integers(3, 500, (2, 40)), jnp.int32)


@pytest.mark.parametrize("backend", ["dot_product", "reference"])
def test_dense_backends_equal_xla(tiny_cfg, ids, backend):
    ref = _logits(tiny_cfg, ids)
    other = _logits(tiny_cfg.with_runtime(attention=backend), ids)
    np.testing.assert_allclose(other, ref, atol=2e-5, rtol=0)


def test_query_blocking_is_exact(monkeypatch):
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(2, 300, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 350, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 350, 2, 8)), jnp.float32)
    mask = jnp.asarray(rng.random((2, 300, 350)) < 0.7)
    full = attention._xla_attention(q, k, v, mask, 8 ** -0.5)
    monkeypatch.setattr(attention, "QUERY_BLOCK", 64)
    blocked = attention.dense_attention(q, k, v, mask, 8 ** -0.5)
    np.testing.assert_allclose(np.asarray(blocked), np.asarray(full), atol=1e-6, rtol=0)
    program = jax.make_jaxpr(attention.dense_attention, static_argnums=4)(q, k, v, mask, 8 ** -0.5).jaxpr
    assert [e.params["length"] for e in _eqns(program) if e.primitive.name == "scan"] == [5]  # ceil(300 / 64) blocks


@pytest.mark.parametrize("policy", ["full", "minimal", "save_qkv_proj", "save_dot_except_mlp"])
def test_remat_policies_keep_gradients(tiny_cfg, ids, policy):
    def grads(cfg):
        graphdef, state = nnx.split(random_model(cfg, seed=2, std=0.1))

        def loss(s):
            return jnp.mean(nnx.merge(graphdef, s).text_logits(ids) ** 2)

        return jax.grad(loss)(state)

    ref = grads(tiny_cfg)
    got = grads(tiny_cfg.with_runtime(remat=policy))
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-5)


def test_bf16_compute_close_to_fp32(tiny_cfg, ids):
    ref = _logits(tiny_cfg, ids)
    model = random_model(tiny_cfg.with_runtime(param_dtype="bfloat16", compute_dtype="bfloat16"), seed=5, std=0.1)
    assert model.lm.embed[...].dtype == jnp.bfloat16
    out = np.asarray(model.text_logits(ids))
    assert out.dtype == np.float32  # logits are always fp32
    dots = [e for e in _eqns(jax.make_jaxpr(model.text_logits)(ids).jaxpr) if e.primitive.name == "dot_general"]
    assert any(e.invars[0].aval.dtype == jnp.bfloat16 for e in dots)  # the matmuls run in bf16
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max() + 0.05
