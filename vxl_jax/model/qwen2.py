"""Qwen2 decoder with Video-XL beacon projections, run over an explicit KV memory.

A chunk of T new tokens attends to ``[memory (M slots, first mem_len valid) || chunk]``:
memory columns are visible when ``slot < mem_len``; chunk columns causally (and only if valid).
With the default ``xla`` backend only the filled slots are read (:mod:`vxl_jax.model.blocked`).
Memory keys are stored already rotated with their memory index, so nothing is re-rotated.
Positions of the chunk are given by the caller (``mem_len + t`` on the release path).

Rows flagged in ``beacon_mask`` take q/k/v from ``beacon_{q,k,v}`` (docs/algorithm.md §4); ``o``, the MLP and
the norms are shared. Layers return their chunk's *pre-RoPE* keys and values, so the caller can
rotate them with whatever memory index they are stored at (beacons move, docs/algorithm.md §5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from vxl_jax.config import LMConfig
from vxl_jax.model.attention import attend
from vxl_jax.model.layers import OutProj, Proj, RMSNorm, param
from vxl_jax.model.rope import apply_rope, rope_tables
from vxl_jax.model.scan import scan_layers, stacked
from vxl_jax.runtime.sharding import constrain


class Attention(nnx.Module):
    def __init__(self, cfg: LMConfig, dtype, rngs: nnx.Rngs):
        D, H, KV, Dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q_axes, kv_axes = ("embed", "heads", "head_dim"), ("embed", "kv_heads", "head_dim")
        self.q = Proj(D, (H, Dh), q_axes, dtype, rngs)
        self.k = Proj(D, (KV, Dh), kv_axes, dtype, rngs)
        self.v = Proj(D, (KV, Dh), kv_axes, dtype, rngs)
        self.beacon_q = Proj(D, (H, Dh), q_axes, dtype, rngs)
        self.beacon_k = Proj(D, (KV, Dh), kv_axes, dtype, rngs)
        self.beacon_v = Proj(D, (KV, Dh), kv_axes, dtype, rngs)
        self.o = OutProj(H, Dh, D, ("heads", "head_dim", "embed"), dtype, rngs, use_bias=False)

    def qkv(self, x, beacon_mask):
        """x [B, T, D] -> q [B, T, H, Dh], k, v [B, T, KV, Dh]; beacon rows use the beacon projections."""
        q, k, v = self.q(x), self.k(x), self.v(x)
        if beacon_mask is not None:
            sel = beacon_mask[:, :, None, None]
            q = jnp.where(sel, self.beacon_q(x), q)
            k = jnp.where(sel, self.beacon_k(x), k)
            v = jnp.where(sel, self.beacon_v(x), v)
        return checkpoint_name(q, "query_proj"), checkpoint_name(k, "key_proj"), checkpoint_name(v, "value_proj")


class MLP(nnx.Module):
    def __init__(self, cfg: LMConfig, dtype, rngs: nnx.Rngs):
        D, F = cfg.hidden_size, cfg.intermediate_size
        self.gate = Proj(D, (F,), ("embed", "mlp"), dtype, rngs, use_bias=False)
        self.up = Proj(D, (F,), ("embed", "mlp"), dtype, rngs, use_bias=False)
        self.down = Proj(F, (D,), ("mlp", "embed"), dtype, rngs, use_bias=False)

    def __call__(self, x):
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LMConfig, dtype, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, rngs)
        self.attn = Attention(cfg, dtype, rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, rngs)
        self.mlp = MLP(cfg, dtype, rngs)

    def __call__(self, x, *, cos, sin, valid, beacon_mask, mem_k, mem_v, mem_len, attention: str, mem_layer=None):
        """x [B, T, D]; cos/sin [B, T, Dh]; valid [B, T]; mem_k/mem_v [B, M, KV, Dh] or None, mem_len [B]
        (or the stacked [L, B, M, KV, Dh] memory with this layer's index ``mem_layer``).

        Returns (x [B, T, D], k_pre_rope [B, T, KV, Dh], v [B, T, KV, Dh]).
        """
        q_rot, k_rot, k, v = self.project(x, cos=cos, sin=sin, beacon_mask=beacon_mask)
        a = attend(q_rot, k_rot, v, valid=valid, causal=True, mem_k=mem_k, mem_v=mem_v, mem_len=mem_len,
                   mem_layer=mem_layer, backend=attention)
        return self.finish(x, a), k, v

    def project(self, x, *, cos, sin, beacon_mask=None):
        """The attention inputs of x [B, T, D] -> (q_rot [B, T, H, Dh], k_rot, k_pre_rope [B, T, KV, Dh], v)."""
        q, k, v = self.attn.qkv(self.input_norm(x), beacon_mask)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), k, v

    def finish(self, x, a):
        """The rest of the layer after attention: x [B, T, D], a [B, T, H, Dh] -> x [B, T, D]."""
        x = x + checkpoint_name(self.attn.o(a), "out_proj")
        return x + self.mlp(self.post_attn_norm(x))


class Qwen2LM(nnx.Module):
    """Token + beacon embeddings, stacked decoder layers, final norm and untied ``lm_head``."""

    def __init__(self, cfg: LMConfig, dtype, rngs: nnx.Rngs):
        self.cfg = cfg
        D, V = cfg.hidden_size, cfg.vocab_size
        self.embed = param(rngs, (V, D), ("vocab", "embed"), dtype)
        self.beacon_embed = param(rngs, (1, D), (None, "embed"), dtype)
        self.layers = stacked(lambda r: DecoderLayer(cfg, dtype, r), cfg.num_layers, rngs)
        self.final_norm = RMSNorm(D, cfg.rms_norm_eps, dtype, rngs)
        self.lm_head = param(rngs, (D, V), ("embed", "vocab"), dtype)

    def embed_tokens(self, ids, dtype):
        """ids [B, T] int -> [B, T, D]."""
        return jnp.take(self.embed[...], ids, axis=0).astype(dtype)

    def beacon_vector(self, dtype):
        return self.beacon_embed[...][0].astype(dtype)

    def __call__(self, x, *, positions, valid=None, beacon_mask=None, mem_k=None, mem_v=None, mem_len=None,
                 attention: str = "xla", remat: str = "none", sliced_memory: bool = False):
        """Run all layers over a chunk.

        x [B, T, D] embeddings; positions [B, T]; valid [B, T] bool (default all);
        mem_k/mem_v [L, B, M, KV, Dh] rotated memory (or None) with mem_len [B].
        ``sliced_memory``: the layer scan hands each layer its own [B, M, KV, Dh] slice (a copy per
        layer, but a per-layer cotangent: use it under autodiff). Default: each layer reads its
        blocks of the stacked buffer in place (inference: nothing is copied per layer or token).
        Returns (hidden [B, T, D] after the final norm, k_pre_rope [L, B, T, KV, Dh], v [L, B, T, KV, Dh]).
        """
        B, T, _ = x.shape
        if valid is None:
            valid = jnp.ones((B, T), bool)
        if mem_len is None:
            mem_len = jnp.zeros((B,), jnp.int32)
        cos, sin = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)

        in_place = mem_k is not None and not sliced_memory

        def step(layer, h, xs):
            # xs: this layer's index (in place), its memory slice (sliced), or None (no memory)
            if in_place:
                mk, mv, index = mem_k, mem_v, xs
            elif xs is not None:
                (mk, mv), index = xs, None
            else:
                mk = mv = index = None
            h, k, v = layer(h, cos=cos, sin=sin, valid=valid, beacon_mask=beacon_mask, mem_k=mk, mem_v=mv,
                            mem_len=mem_len, mem_layer=index, attention=attention)
            return constrain(h, ("batch", "length", "act_embed")), (k, v)

        if mem_k is None:
            xs = None
        else:
            xs = jnp.arange(mem_k.shape[0], dtype=jnp.int32) if in_place else (mem_k, mem_v)
        x, (ks, vs) = scan_layers(self.layers, step, x, xs, remat=remat)
        return self.final_norm(x), ks, vs

    def logits(self, hidden):
        """hidden [..., D] -> fp32 logits [..., V]."""
        return jnp.einsum("...d,dv->...v", hidden, self.lm_head[...].astype(hidden.dtype),
                          preferred_element_type=jnp.float32)
