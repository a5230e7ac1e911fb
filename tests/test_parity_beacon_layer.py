"""Decoder layers with beacon rows == a PyTorch formulation built from transformers' Qwen2 pieces.

Rows flagged as beacons take q/k/v from beacon_{q,k,v}_proj, all others from {q,k,v}_proj;
o_proj, MLP and norms are shared (docs/algorithm.md §4). Checked with and without a prefix KV memory.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv

from tests.torch_ref import released_tensors, tiny_clip, tiny_qwen2, videoxl_config_for
from vxl_jax.convert.names import load_torch_into
from vxl_jax.beacon.memory import KVMemory, append
from vxl_jax.model.videoxl import random_model

PREFIX, CHUNK, RATIO = 7, 40, 3


def _linear(w, b):
    lin = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    return lin


def torch_reference(qwen, tensors, x, beacon):
    """x [1, T, D], beacon [T] bool -> (final-normed hidden [T, D], per layer pre-RoPE k, v [T, KV, Dh])."""
    cfg = qwen.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    Dh = cfg.hidden_size // H
    T = x.shape[1]
    pos = torch.arange(T)[None]
    cos, sin = qwen.model.rotary_emb(x, pos)
    causal = torch.full((T, T), float("-inf")).triu(1)
    sel = torch.from_numpy(beacon)[None, :, None]
    ks, vs = [], []
    with torch.no_grad():
        for i, layer in enumerate(qwen.model.layers):
            att = layer.self_attn
            b = {p: _linear(tensors[f"model.layers.{i}.self_attn.beacon_{p}_proj.weight"],
                            tensors[f"model.layers.{i}.self_attn.beacon_{p}_proj.bias"]) for p in "qkv"}
            h = layer.input_layernorm(x)
            q = torch.where(sel, b["q"](h), att.q_proj(h)).view(1, T, H, Dh).transpose(1, 2)
            k = torch.where(sel, b["k"](h), att.k_proj(h)).view(1, T, KV, Dh).transpose(1, 2)
            v = torch.where(sel, b["v"](h), att.v_proj(h)).view(1, T, KV, Dh).transpose(1, 2)
            ks.append(k[0].transpose(0, 1).numpy())
            vs.append(v[0].transpose(0, 1).numpy())
            qr, kr = apply_rotary_pos_emb(q, k, cos, sin)
            kr, vr = repeat_kv(kr, H // KV), repeat_kv(v, H // KV)
            scores = qr @ kr.transpose(2, 3) / Dh ** 0.5 + causal
            probs = torch.softmax(scores.float(), dim=-1)
            a = (probs @ vr).transpose(1, 2).reshape(1, T, H * Dh)
            x = x + att.o_proj(a)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return qwen.model.norm(x)[0].numpy(), np.stack(ks), np.stack(vs)


@pytest.fixture(scope="module")
def setup():
    qwen, clip = tiny_qwen2(seed=4), tiny_clip(seed=1)
    tensors = released_tensors(qwen, clip, seed=11)
    cfg = videoxl_config_for(qwen, clip)
    ours = load_torch_into(random_model(cfg, seed=3), tensors)
    T = PREFIX + CHUNK
    beacon = np.zeros(T, bool)
    beacon[PREFIX:] = np.arange(CHUNK) % (RATIO + 1) == RATIO  # interleave: one beacon after every RATIO rows
    x = np.random.default_rng(0).normal(size=(1, T, cfg.lm.hidden_size)).astype(np.float32)
    ref = torch_reference(qwen, tensors, torch.from_numpy(x), beacon)
    return cfg, ours, x, beacon, ref


def test_beacon_rows_use_beacon_projections(setup):
    cfg, ours, x, beacon, (ref_h, ref_k, ref_v) = setup
    T = x.shape[1]
    run = jax.jit(lambda m, x, bm: m.lm(x, positions=jnp.arange(T)[None], beacon_mask=bm))
    h, k, v = run(ours, jnp.asarray(x), jnp.asarray(beacon[None]))
    np.testing.assert_allclose(np.asarray(h)[0], ref_h, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(k)[:, 0], ref_k, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(v)[:, 0], ref_v, atol=1e-5, rtol=0)
    # without the beacon flags: identical before the first beacon, different from it on
    h0 = np.asarray(run(ours, jnp.asarray(x), jnp.zeros((1, T), bool))[0])[0]
    first = int(np.flatnonzero(beacon)[0])
    np.testing.assert_allclose(h0[:first], ref_h[:first], atol=1e-5, rtol=0)
    assert np.abs(h0[first:] - ref_h[first:]).max() > 1e-2


def test_beacon_chunk_over_prefix_memory(setup):
    cfg, ours, x, beacon, (ref_h, _, _) = setup
    lm = cfg.lm
    mem = KVMemory.empty(lm.num_layers, 1, 64, lm.num_kv_heads, lm.head_dim, jnp.float32)

    @jax.jit
    def run(m, mem, xs, bm, start):
        T = xs.shape[1]
        h, k, v = m.lm(xs, positions=(start + jnp.arange(T))[None], beacon_mask=bm, mem_k=mem.k, mem_v=mem.v,
                       mem_len=mem.length)
        return h, append(mem, k, v, jnp.array([T], jnp.int32), theta=lm.rope_theta, kind="prefix")

    _, mem = run(ours, mem, jnp.asarray(x[:, :PREFIX]), jnp.asarray(beacon[None, :PREFIX]), 0)
    h, _ = run(ours, mem, jnp.asarray(x[:, PREFIX:]), jnp.asarray(beacon[None, PREFIX:]), PREFIX)
    np.testing.assert_allclose(np.asarray(h)[0], ref_h[PREFIX:], atol=1e-5, rtol=0)
