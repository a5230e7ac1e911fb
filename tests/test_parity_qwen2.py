"""Qwen2 decoder == transformers Qwen2ForCausalLM (eager, fp32): full forward and KV-cached decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.torch_ref import released_tensors, tiny_clip, tiny_qwen2, videoxl_config_for
from vxl_jax.convert.names import load_torch_into
from vxl_jax.beacon.memory import KVMemory, append
from vxl_jax.model.videoxl import random_model

T_FULL, T_PREFILL, T_STEPS = 520, 300, 20


@pytest.fixture(scope="module")
def models():
    qwen, clip = tiny_qwen2(seed=0), tiny_clip(seed=1)
    cfg = videoxl_config_for(qwen, clip)
    ours = load_torch_into(random_model(cfg, seed=9), released_tensors(qwen, clip))
    ids = np.random.default_rng(0).integers(0, cfg.lm.vocab_size, size=(1, T_FULL))
    with torch.no_grad():
        ref = qwen(torch.from_numpy(ids)).logits[0].numpy()
    return cfg, ours, ids, ref


def test_full_forward_logits(models):
    cfg, ours, ids, ref = models
    logits = np.asarray(jax.jit(lambda m, x: m.text_logits(x))(ours, jnp.asarray(ids, jnp.int32)))[0]
    assert logits.shape == ref.shape == (T_FULL, cfg.lm.vocab_size)
    assert np.abs(ref).max() > 1.0  # non-trivial logits
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)


def test_kv_cached_decoding_equals_full_forward(models):
    cfg, ours, ids, ref = models
    lm = cfg.lm
    mem = KVMemory.empty(lm.num_layers, 1, 512, lm.num_kv_heads, lm.head_dim, jnp.float32)

    @jax.jit
    def run(model, mem, chunk, start):
        T = chunk.shape[1]
        x = model.lm.embed_tokens(chunk, jnp.float32)
        positions = (start + jnp.arange(T, dtype=jnp.int32))[None]
        hidden, k, v = model.lm(x, positions=positions, mem_k=mem.k, mem_v=mem.v, mem_len=mem.length)
        mem = append(mem, k, v, jnp.array([T], jnp.int32), theta=lm.rope_theta, kind="text")
        return model.lm.logits(hidden)[0], mem

    ids_j = jnp.asarray(ids, jnp.int32)
    first, mem = run(ours, mem, ids_j[:, :T_PREFILL], jnp.int32(0))
    steps = [np.asarray(first)]
    for t in range(T_PREFILL, T_PREFILL + T_STEPS):
        lg, mem = run(ours, mem, ids_j[:, t:t + 1], jnp.int32(t))
        steps.append(np.asarray(lg))
    cached = np.concatenate(steps)
    assert int(mem.length[0]) == T_PREFILL + T_STEPS
    np.testing.assert_allclose(cached, ref[:T_PREFILL + T_STEPS], atol=1e-4, rtol=0)
    full = np.asarray(jax.jit(lambda m, x: m.text_logits(x))(ours, ids_j[:, :T_PREFILL + T_STEPS]))[0]
    np.testing.assert_allclose(cached, full, atol=2e-5, rtol=0)
