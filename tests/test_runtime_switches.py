"""Runtime switches change how the model runs, never what it computes: attention backend, remat
policy, query blocking; bf16 compute stays close to fp32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vxl_jax.model import attention, random_model


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
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max() + 0.05
