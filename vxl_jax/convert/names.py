"""Released PyTorch tensor names <-> our NNX parameter paths, with the per-key layout transform.

One table, both directions. Used by the converter and by the parity tests (weights are copied
torch -> ours only through :func:`build_table` + :func:`to_ours`).

Transforms (torch layout -> ours):
  copy         identical
  linear       Linear weight [out, in]            -> kernel [in, out]
  linear_heads q/k/v weight [H*Dh, in]            -> kernel [in, H, Dh]
  bias_heads   q/k/v bias [H*Dh]                  -> bias [H, Dh]
  out_heads    o/out_proj weight [out, H*Dh]      -> kernel [H, Dh, out]
  conv         Conv2d weight [out, in, kh, kw]    -> kernel [kh, kw, in, out] (HWIO)
Stacked layer parameters ([L, ...] in our tree) take one torch tensor per layer index.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from vxl_jax.model.videoxl import abstract_model

VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
# Optional prefixes of the vision tower, longest first; whatever follows must be a CLIP root name.
_VISION_PREFIXES = (
    "model.vision_tower.vision_tower.vision_model.",
    "model.vision_tower.vision_tower.",
    "vision_tower.vision_model.",
    "vision_model.",
    "",
)
_CLIP_ROOTS = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")

@dataclasses.dataclass(frozen=True)
class Entry:
    """One torch tensor <-> (one layer of) one of our parameters."""

    torch_name: str  # canonical released name
    path: tuple[str, ...]  # our pure-dict path, e.g. ("lm", "layers", "attn", "q", "kernel")
    layer: int | None  # index into the stacked axis, or None
    transform: str  # layout transform ("copy", "linear", "linear_heads", ...), see the module docstring
    ours_shape: tuple[int, ...]  # shape of our slice (without the layer axis)

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return torch_shape(self.transform, self.ours_shape)

    @property
    def key(self) -> str:
        return "/".join(self.path) + ("" if self.layer is None else f"[{self.layer}]")


def torch_shape(transform: str, s: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the torch tensor whose converted form has our shape ``s``."""
    if transform == "copy":
        return tuple(s)
    if transform == "linear":
        return (s[1], s[0])
    if transform == "linear_heads":
        return (s[1] * s[2], s[0])
    if transform == "bias_heads":
        return (s[0] * s[1],)
    if transform == "out_heads":
        return (s[2], s[0] * s[1])
    if transform == "conv":
        return (s[3], s[2], s[0], s[1])
    raise ValueError(f"unknown transform {transform!r}")


def to_ours(transform: str, t: np.ndarray, ours_shape: tuple[int, ...]) -> np.ndarray:
    """torch-layout array -> our layout (a view where numpy allows it)."""
    if transform == "copy":
        return t
    if transform == "linear":
        return t.T
    if transform == "linear_heads":
        return t.T.reshape(ours_shape)
    if transform == "bias_heads":
        return t.reshape(ours_shape)
    if transform == "out_heads":
        return t.T.reshape(ours_shape)
    if transform == "conv":
        return t.transpose(2, 3, 1, 0)
    raise ValueError(f"unknown transform {transform!r}")


def to_torch(transform: str, a: np.ndarray) -> np.ndarray:
    """Our layout -> torch layout (inverse of :func:`to_ours`)."""
    if transform == "copy":
        return a
    if transform == "linear":
        return a.T
    if transform == "linear_heads":
        return a.reshape(a.shape[0], -1).T
    if transform == "bias_heads":
        return a.reshape(-1)
    if transform == "out_heads":
        return a.reshape(-1, a.shape[-1]).T
    if transform == "conv":
        return a.transpose(3, 2, 0, 1)
    raise ValueError(f"unknown transform {transform!r}")


def canonical_name(name: str) -> str:
    """Strip optional vision-tower prefixes: any CLIP tensor name -> the released full name.

    Language-model and projector names are returned unchanged.
    """
    if name.startswith(("model.layers.", "model.embed_tokens", "model.beacon_embed_tokens", "model.norm.",
                        "model.mm_projector.", "lm_head.")):
        return name
    for p in _VISION_PREFIXES:
        if name.startswith(p) and name[len(p):].startswith(_CLIP_ROOTS):
            return VISION_PREFIX + name[len(p):]
    return name


# (torch suffix, our sub-path, transform) for one layer / one module.
_LM_LAYER = [
    ("input_layernorm.weight", ("input_norm", "scale"), "copy"),
    ("post_attention_layernorm.weight", ("post_attn_norm", "scale"), "copy"),
    *[(f"self_attn.{p}{x}_proj.weight", ("attn", f"{p}{x}", "kernel"), "linear_heads")
      for p in ("", "beacon_") for x in "qkv"],
    *[(f"self_attn.{p}{x}_proj.bias", ("attn", f"{p}{x}", "bias"), "bias_heads")
      for p in ("", "beacon_") for x in "qkv"],
    ("self_attn.o_proj.weight", ("attn", "o", "kernel"), "out_heads"),
    ("mlp.gate_proj.weight", ("mlp", "gate", "kernel"), "linear"),
    ("mlp.up_proj.weight", ("mlp", "up", "kernel"), "linear"),
    ("mlp.down_proj.weight", ("mlp", "down", "kernel"), "linear"),
]
_LM_TOP = [
    ("model.embed_tokens.weight", ("lm", "embed"), "copy"),
    ("model.beacon_embed_tokens.weight", ("lm", "beacon_embed"), "copy"),
    ("model.norm.weight", ("lm", "final_norm", "scale"), "copy"),
    ("lm_head.weight", ("lm", "lm_head"), "linear"),
    ("model.mm_projector.0.weight", ("projector", "fc1", "kernel"), "linear"),
    ("model.mm_projector.0.bias", ("projector", "fc1", "bias"), "copy"),
    ("model.mm_projector.2.weight", ("projector", "fc2", "kernel"), "linear"),
    ("model.mm_projector.2.bias", ("projector", "fc2", "bias"), "copy"),
]
_VIS_TOP = [
    ("embeddings.class_embedding", ("vision", "class_embed"), "copy"),
    ("embeddings.patch_embedding.weight", ("vision", "patch_embed"), "conv"),
    ("embeddings.position_embedding.weight", ("vision", "pos_embed"), "copy"),
    ("pre_layrnorm.weight", ("vision", "pre_norm", "scale"), "copy"),
    ("pre_layrnorm.bias", ("vision", "pre_norm", "bias"), "copy"),
    ("post_layernorm.weight", ("vision", "post_norm", "scale"), "copy"),
    ("post_layernorm.bias", ("vision", "post_norm", "bias"), "copy"),
]
_VIS_LAYER = [
    ("layer_norm1.weight", ("norm1", "scale"), "copy"),
    ("layer_norm1.bias", ("norm1", "bias"), "copy"),
    ("layer_norm2.weight", ("norm2", "scale"), "copy"),
    ("layer_norm2.bias", ("norm2", "bias"), "copy"),
    *[(f"self_attn.{x}_proj.weight", (x, "kernel"), "linear_heads") for x in "qkv"],
    *[(f"self_attn.{x}_proj.bias", (x, "bias"), "bias_heads") for x in "qkv"],
    ("self_attn.out_proj.weight", ("o", "kernel"), "out_heads"),
    ("self_attn.out_proj.bias", ("o", "bias"), "copy"),
    ("mlp.fc1.weight", ("fc1", "kernel"), "linear"),
    ("mlp.fc1.bias", ("fc1", "bias"), "copy"),
    ("mlp.fc2.weight", ("fc2", "kernel"), "linear"),
    ("mlp.fc2.bias", ("fc2", "bias"), "copy"),
]

BEACON_PATHS = {("lm", "beacon_embed")} | {("lm", "layers", "attn", f"beacon_{x}", w) for x in "qkv"
                                           for w in ("kernel", "bias")}


def param_shapes(cfg) -> dict[tuple[str, ...], tuple[tuple[int, ...], object]]:
    """Our parameter tree for ``cfg``: path -> (full shape, dtype), from ``abstract_model``."""
    _, state = nnx.split(abstract_model(cfg))
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0]:
        out[tuple(str(k.key) for k in path)] = (tuple(leaf.shape), leaf.dtype)
    return out


def build_table(cfg, shapes: dict | None = None) -> dict[str, Entry]:
    """Every canonical torch name of a Video-XL checkpoint for ``cfg`` -> its :class:`Entry`.

    Raises AssertionError if the table and our parameter tree disagree (a bug, not bad input).
    """
    shapes = shapes if shapes is not None else param_shapes(cfg)
    table: dict[str, Entry] = {}

    def add(name, path, transform, layer=None):
        full = shapes[path][0]
        table[name] = Entry(name, path, layer, transform, full if layer is None else full[1:])

    for name, path, transform in _LM_TOP:
        add(name, path, transform)
    for i in range(cfg.lm.num_layers):
        for suffix, sub, transform in _LM_LAYER:
            add(f"model.layers.{i}.{suffix}", ("lm", "layers", *sub), transform, i)
    for suffix, path, transform in _VIS_TOP:
        add(VISION_PREFIX + suffix, path, transform)
    for j in range(cfg.vision.num_layers):
        for suffix, sub, transform in _VIS_LAYER:
            add(f"{VISION_PREFIX}encoder.layers.{j}.{suffix}", ("vision", "layers", *sub), transform, j)
    covered = {e.path for e in table.values()}
    assert covered == set(shapes), f"name table does not cover the parameter tree: {covered ^ set(shapes)}"
    return table


def is_beacon(entry: Entry) -> bool:
    return entry.path in BEACON_PATHS


def nest(flat: dict[tuple[str, ...], object]) -> dict:
    root: dict = {}
    for path, v in flat.items():
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return root


def flatten(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + (str(k),)))
        else:
            out[prefix + (str(k),)] = v
    return out


def load_torch_into(model, tensors: dict, strict: bool = True):
    """Copy of ``model`` (a VideoXLModel) with the given torch-named tensors copied in.

    ``tensors``: name -> array (numpy or torch), any vision prefix. Every name must be known and
    well shaped; with ``strict`` every parameter must be given, else only those given are replaced.
    """
    import jax.numpy as jnp
    from flax import nnx

    cfg = model.cfg
    table = build_table(cfg)
    canon = {}
    for n, t in tensors.items():
        t = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        c = canonical_name(n)
        if c not in table:
            raise KeyError(f"unknown tensor {n!r}")
        if c in canon:
            raise KeyError(f"{n!r} duplicates another tensor ({c!r})")
        if tuple(t.shape) != table[c].torch_shape:
            raise ValueError(f"{n}: shape {tuple(t.shape)}, expected {table[c].torch_shape}")
        canon[c] = t
    if strict and set(canon) != set(table):
        raise KeyError(f"missing tensors: {sorted(set(table) - set(canon))}")
    graphdef, state = nnx.split(model)
    flat = {p: np.array(v) for p, v in flatten(nnx.to_pure_dict(state)).items()}
    for c, t in canon.items():
        e = table[c]
        v = to_ours(e.transform, t, e.ours_shape)
        if e.layer is None:
            flat[e.path][...] = v
        else:
            flat[e.path][e.layer] = v
    nnx.replace_by_pure_dict(state, nest({p: jnp.asarray(v) for p, v in flat.items()}))
    return nnx.merge(graphdef, state)
