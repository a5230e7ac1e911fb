"""A deliberately simple Video-XL reference for tests: no scan, no memory buffer, no chunking.

The whole prompt is laid out as one sequence (prefix, every window interleaved with its beacons,
suffix) and every layer runs ONE attention over it with an explicit mask built from docs/algorithm.md §4:

- a query sees every earlier-step key that is kept in memory (prefix, beacons, text), and the
  keys of its own step causally (raw visual tokens are visible only inside their window);
- a key's RoPE position is its in-step position when the query is in the same step, and its
  memory index otherwise (compact positions, docs/algorithm.md §5).

Written from docs/algorithm.md with plain numpy (float64), independent of the package's layer code.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Layout:
    embeds: np.ndarray  # [N, D]
    is_beacon: np.ndarray  # [N] bool
    step: np.ndarray  # [N] int
    pos: np.ndarray  # [N] position inside its step's forward
    kept: np.ndarray  # [N] bool: stays in memory after its step
    mem_index: np.ndarray  # [N] memory slot (valid where kept)
    is_suffix: np.ndarray  # [N] bool


def build_layout(params, prefix_ids, features, suffix_ids, ratios_per_window, window: int) -> Layout:
    lm = params["lm"]
    embed, beacon = np.asarray(lm["embed"], np.float64), np.asarray(lm["beacon_embed"], np.float64)[0]
    rows, flags, steps, pos, kept, mem_idx, suffix = [], [], [], [], [], [], []
    mem = 0
    for t, tok in enumerate(prefix_ids):
        rows.append(embed[tok]); flags.append(False); steps.append(0); pos.append(t); kept.append(True)
        mem_idx.append(t); suffix.append(False)
    mem = len(prefix_ids)
    step = 1
    n_total = len(features)
    for w, r in enumerate(ratios_per_window):
        chunk = features[w * window: min(n_total, (w + 1) * window)]
        n = len(chunk)
        nb = n // r
        offset, j = 0, 0
        for k in range(n):
            rows.append(np.asarray(chunk[k], np.float64)); flags.append(False); steps.append(step)
            pos.append(mem + offset); kept.append(False); mem_idx.append(-1); suffix.append(False)
            offset += 1
            if (k + 1) % r == 0 and j < nb:
                rows.append(beacon); flags.append(True); steps.append(step); pos.append(mem + offset)
                kept.append(True); mem_idx.append(mem + j); suffix.append(False)
                offset += 1
                j += 1
        mem += nb
        step += 1
    for t, tok in enumerate(suffix_ids):
        rows.append(embed[tok]); flags.append(False); steps.append(step); pos.append(mem + t); kept.append(True)
        mem_idx.append(mem + t); suffix.append(True)
    a = np.asarray
    return Layout(np.stack(rows), a(flags), a(steps), a(pos), a(kept), a(mem_idx), a(suffix))


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x, positions, theta):
    """x [N, H, Dh]; positions [N]."""
    dh = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, dh, 2) / dh)
    ang = positions[:, None].astype(np.float64) * inv
    emb = np.concatenate([ang, ang], axis=-1)
    cos, sin = np.cos(emb)[:, None], np.sin(emb)[:, None]
    rot = np.concatenate([-x[..., dh // 2:], x[..., :dh // 2]], axis=-1)
    return x * cos + rot * sin


def run(params, cfg, layout: Layout):
    """-> (logits of suffix rows [S, V], kept keys [L, K, KV, Dh] rotated at memory index, kept values)."""
    lm, c = params["lm"], cfg.lm
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    x = layout.embeds.copy()
    N = len(x)
    idx = np.arange(N)
    same = layout.step[:, None] == layout.step[None, :]
    visible = (same & (idx[None, :] <= idx[:, None])) | (
        (layout.step[None, :] < layout.step[:, None]) & layout.kept[None, :])
    groups = c.num_heads // c.num_kv_heads
    keys, values = [], []
    for li in range(c.num_layers):
        L = {k: v for k, v in _layer(lm["layers"], li).items()}
        h = _rms(x, f64(L["input_norm"]["scale"]), c.rms_norm_eps)

        def proj(name):
            ordinary = np.einsum("nd,dhk->nhk", h, f64(L["attn"][name]["kernel"])) + f64(L["attn"][name]["bias"])
            beacon = np.einsum("nd,dhk->nhk", h, f64(L["attn"]["beacon_" + name]["kernel"])) + f64(
                L["attn"]["beacon_" + name]["bias"])
            return np.where(layout.is_beacon[:, None, None], beacon, ordinary)

        q, k, v = proj("q"), proj("k"), proj("v")
        q = _rope(q, layout.pos, c.rope_theta)
        k_local = _rope(k, layout.pos, c.rope_theta)
        k_mem = _rope(k, np.where(layout.kept, layout.mem_index, 0), c.rope_theta)
        keys.append(k_mem[layout.kept]); values.append(v[layout.kept])
        k_local = np.repeat(k_local, groups, axis=1)
        k_mem = np.repeat(k_mem, groups, axis=1)
        vv = np.repeat(v, groups, axis=1)
        s_local = np.einsum("qhd,khd->hqk", q, k_local)
        s_mem = np.einsum("qhd,khd->hqk", q, k_mem)
        scores = np.where(same[None], s_local, s_mem) / np.sqrt(c.head_dim)
        scores = np.where(visible[None], scores, -np.inf)
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        a = np.einsum("hqk,khd->qhd", p, vv)
        x = x + np.einsum("qhd,hde->qe", a, f64(L["attn"]["o"]["kernel"]))
        h = _rms(x, f64(L["post_attn_norm"]["scale"]), c.rms_norm_eps)
        gate = h @ f64(L["mlp"]["gate"]["kernel"])
        up = h @ f64(L["mlp"]["up"]["kernel"])
        x = x + ((gate / (1 + np.exp(-gate))) * up) @ f64(L["mlp"]["down"]["kernel"])
    x = _rms(x, f64(lm["final_norm"]["scale"]), c.rms_norm_eps)
    logits = x[layout.is_suffix] @ f64(lm["lm_head"])
    return logits, np.stack(keys), np.stack(values)


def _layer(tree, i):
    if isinstance(tree, dict):
        return {k: _layer(v, i) for k, v in tree.items()}
    return np.asarray(tree)[i]
