"""The 7B preset's abstract parameter tree matches spec section 2.2, with no array allocated.

Two independent tables: our layout (kernels [in, out...], head-split q/k/v, layers stacked on
axis 0) and the released checkpoint's torch shapes ([out, in] Linear weights, one entry per layer).
Every one of our parameters is mapped to the torch tensors it holds, and element counts must agree.
"""

import math
import pathlib

import jax
import jax.numpy as jnp

from vxl_jax.config import VideoXLConfig
from vxl_jax.model import abstract_model
from vxl_jax.runtime.sharding import iter_params

CFG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "videoxl_7b.yaml"

L, D, H, KV, Dh, F, V = 28, 3584, 28, 4, 128, 18944, 152064  # Qwen2-7B
LV, C, HV, DhV, I = 24, 1024, 16, 64, 4096  # CLIP ViT-L/14-336

# Our layout (context file "parameter tree").
OURS = {
    "vision/patch_embed": (14, 14, 3, C),
    "vision/class_embed": (C,),
    "vision/pos_embed": (577, C),
    "vision/pre_norm/scale": (C,), "vision/pre_norm/bias": (C,),
    "vision/layers/norm1/scale": (LV, C), "vision/layers/norm1/bias": (LV, C),
    **{f"vision/layers/{p}/kernel": (LV, C, HV, DhV) for p in "qkv"},
    **{f"vision/layers/{p}/bias": (LV, HV, DhV) for p in "qkv"},
    "vision/layers/o/kernel": (LV, HV, DhV, C), "vision/layers/o/bias": (LV, C),
    "vision/layers/norm2/scale": (LV, C), "vision/layers/norm2/bias": (LV, C),
    "vision/layers/fc1/kernel": (LV, C, I), "vision/layers/fc1/bias": (LV, I),
    "vision/layers/fc2/kernel": (LV, I, C), "vision/layers/fc2/bias": (LV, C),
    "vision/post_norm/scale": (C,), "vision/post_norm/bias": (C,),
    "projector/fc1/kernel": (C, D), "projector/fc1/bias": (D,),
    "projector/fc2/kernel": (D, D), "projector/fc2/bias": (D,),
    "lm/embed": (V, D),
    "lm/beacon_embed": (1, D),
    "lm/layers/input_norm/scale": (L, D),
    **{f"lm/layers/attn/{p}/kernel": (L, D, H, Dh) for p in ("q", "beacon_q")},
    **{f"lm/layers/attn/{p}/bias": (L, H, Dh) for p in ("q", "beacon_q")},
    **{f"lm/layers/attn/{p}/kernel": (L, D, KV, Dh) for p in ("k", "v", "beacon_k", "beacon_v")},
    **{f"lm/layers/attn/{p}/bias": (L, KV, Dh) for p in ("k", "v", "beacon_k", "beacon_v")},
    "lm/layers/attn/o/kernel": (L, H, Dh, D),
    "lm/layers/post_attn_norm/scale": (L, D),
    "lm/layers/mlp/gate/kernel": (L, D, F), "lm/layers/mlp/up/kernel": (L, D, F),
    "lm/layers/mlp/down/kernel": (L, F, D),
    "lm/final_norm/scale": (D,),
    "lm/lm_head": (D, V),
}

# Spec 2.2 torch shapes: name -> (shape, how many copies). {i}: per LM layer, {j}: per CLIP layer.
VT = "model.vision_tower.vision_tower.vision_model."
TORCH = {
    "model.embed_tokens.weight": ((152064, 3584), 1),
    "model.beacon_embed_tokens.weight": ((1, 3584), 1),
    "model.layers.{i}.input_layernorm.weight": ((3584,), 28),
    "model.layers.{i}.post_attention_layernorm.weight": ((3584,), 28),
    "model.layers.{i}.self_attn.q_proj.weight": ((3584, 3584), 28),
    "model.layers.{i}.self_attn.q_proj.bias": ((3584,), 28),
    "model.layers.{i}.self_attn.k_proj.weight": ((512, 3584), 28),
    "model.layers.{i}.self_attn.k_proj.bias": ((512,), 28),
    "model.layers.{i}.self_attn.v_proj.weight": ((512, 3584), 28),
    "model.layers.{i}.self_attn.v_proj.bias": ((512,), 28),
    "model.layers.{i}.self_attn.o_proj.weight": ((3584, 3584), 28),
    "model.layers.{i}.self_attn.beacon_q_proj.weight": ((3584, 3584), 28),
    "model.layers.{i}.self_attn.beacon_q_proj.bias": ((3584,), 28),
    "model.layers.{i}.self_attn.beacon_k_proj.weight": ((512, 3584), 28),
    "model.layers.{i}.self_attn.beacon_k_proj.bias": ((512,), 28),
    "model.layers.{i}.self_attn.beacon_v_proj.weight": ((512, 3584), 28),
    "model.layers.{i}.self_attn.beacon_v_proj.bias": ((512,), 28),
    "model.layers.{i}.mlp.gate_proj.weight": ((18944, 3584), 28),
    "model.layers.{i}.mlp.up_proj.weight": ((18944, 3584), 28),
    "model.layers.{i}.mlp.down_proj.weight": ((3584, 18944), 28),
    "model.norm.weight": ((3584,), 1),
    "lm_head.weight": ((152064, 3584), 1),
    VT + "embeddings.class_embedding": ((1024,), 1),
    VT + "embeddings.patch_embedding.weight": ((1024, 3, 14, 14), 1),
    VT + "embeddings.position_embedding.weight": ((577, 1024), 1),
    VT + "pre_layrnorm.weight": ((1024,), 1),
    VT + "pre_layrnorm.bias": ((1024,), 1),
    **{VT + f"encoder.layers.{{j}}.self_attn.{p}_proj.weight": ((1024, 1024), 24) for p in ("q", "k", "v", "out")},
    **{VT + f"encoder.layers.{{j}}.self_attn.{p}_proj.bias": ((1024,), 24) for p in ("q", "k", "v", "out")},
    **{VT + f"encoder.layers.{{j}}.layer_norm{n}.{w}": ((1024,), 24) for n in (1, 2) for w in ("weight", "bias")},
    VT + "encoder.layers.{j}.mlp.fc1.weight": ((4096, 1024), 24),
    VT + "encoder.layers.{j}.mlp.fc1.bias": ((4096,), 24),
    VT + "encoder.layers.{j}.mlp.fc2.weight": ((1024, 4096), 24),
    VT + "encoder.layers.{j}.mlp.fc2.bias": ((1024,), 24),
    VT + "post_layernorm.weight": ((1024,), 1),
    VT + "post_layernorm.bias": ((1024,), 1),
    "model.mm_projector.0.weight": ((3584, 1024), 1),
    "model.mm_projector.0.bias": ((3584,), 1),
    "model.mm_projector.2.weight": ((3584, 3584), 1),
    "model.mm_projector.2.bias": ((3584,), 1),
}

# Which torch tensor each of our parameters holds (all layers stacked).
_ATT = "model.layers.{i}.self_attn."
_VL = VT + "encoder.layers.{j}."
TORCH_OF = {
    "vision/patch_embed": VT + "embeddings.patch_embedding.weight",
    "vision/class_embed": VT + "embeddings.class_embedding",
    "vision/pos_embed": VT + "embeddings.position_embedding.weight",
    "vision/pre_norm/scale": VT + "pre_layrnorm.weight", "vision/pre_norm/bias": VT + "pre_layrnorm.bias",
    "vision/post_norm/scale": VT + "post_layernorm.weight", "vision/post_norm/bias": VT + "post_layernorm.bias",
    "vision/layers/norm1/scale": _VL + "layer_norm1.weight", "vision/layers/norm1/bias": _VL + "layer_norm1.bias",
    "vision/layers/norm2/scale": _VL + "layer_norm2.weight", "vision/layers/norm2/bias": _VL + "layer_norm2.bias",
    **{f"vision/layers/{p}/{w}": _VL + f"self_attn.{p}_proj.{t}" for p in "qkv"
       for w, t in (("kernel", "weight"), ("bias", "bias"))},
    "vision/layers/o/kernel": _VL + "self_attn.out_proj.weight", "vision/layers/o/bias": _VL + "self_attn.out_proj.bias",
    **{f"vision/layers/{p}/{w}": _VL + f"mlp.{p}.{t}" for p in ("fc1", "fc2")
       for w, t in (("kernel", "weight"), ("bias", "bias"))},
    "projector/fc1/kernel": "model.mm_projector.0.weight", "projector/fc1/bias": "model.mm_projector.0.bias",
    "projector/fc2/kernel": "model.mm_projector.2.weight", "projector/fc2/bias": "model.mm_projector.2.bias",
    "lm/embed": "model.embed_tokens.weight",
    "lm/beacon_embed": "model.beacon_embed_tokens.weight",
    "lm/layers/input_norm/scale": "model.layers.{i}.input_layernorm.weight",
    "lm/layers/post_attn_norm/scale": "model.layers.{i}.post_attention_layernorm.weight",
    **{f"lm/layers/attn/{p}/{w}": _ATT + f"{p}_proj.{t}" for p in ("q", "k", "v", "beacon_q", "beacon_k", "beacon_v")
       for w, t in (("kernel", "weight"), ("bias", "bias"))},
    "lm/layers/attn/o/kernel": _ATT + "o_proj.weight",
    **{f"lm/layers/mlp/{p}/kernel": f"model.layers.{{i}}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")},
    "lm/final_norm/scale": "model.norm.weight",
    "lm/lm_head": "lm_head.weight",
}


def _abstract_params():
    cfg = VideoXLConfig.from_yaml(CFG)
    before = len(jax.live_arrays())
    model = abstract_model(cfg)
    params = dict(iter_params(model))
    assert len(jax.live_arrays()) == before, "abstract_model allocated device arrays"
    return params


def test_7b_shapes_and_counts_match_spec():
    params = _abstract_params()
    leaves = {p: v.get_value() for p, v in params.items()}
    # Abstract only: nothing but ShapeDtypeStructs, stored in the preset's bf16.
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves.values())
    assert {x.dtype for x in leaves.values()} == {jnp.dtype(jnp.bfloat16)}

    got = {p: tuple(x.shape) for p, x in leaves.items()}
    assert sorted(got) == sorted(OURS), (set(got) ^ set(OURS))
    for p, shape in OURS.items():
        assert got[p] == shape, (p, got[p], shape)

    # Each of our params holds exactly one torch tensor (times its layer count); all are used once.
    assert sorted(TORCH_OF.values()) == sorted(TORCH), set(TORCH) ^ set(TORCH_OF.values())
    for p, tname in TORCH_OF.items():
        tshape, copies = TORCH[tname]
        assert math.prod(got[p]) == copies * math.prod(tshape), (p, got[p], tname, tshape, copies)
        if copies > 1:
            assert got[p][0] == copies, p  # layers stacked on axis 0

    ours_total = sum(math.prod(s) for s in got.values())
    torch_total = sum(copies * math.prod(shape) for shape, copies in TORCH.values())
    assert ours_total == torch_total
    assert abs(torch_total - 8.4e9) < 0.05e9, torch_total  # spec: "total model ~ 8.4 B"

    # Spec 2.2 "Sizes": beacon extras 28*(3584^2 + 3584 + 2*(512*3584 + 512)) + 3584 ~ 462.6 M.
    beacon = sum(math.prod(s) for p, s in got.items() if "beacon" in p)
    assert beacon == 28 * (3584 * 3584 + 3584 + 2 * (512 * 3584 + 512)) + 3584
    assert round(beacon / 1e6, 1) == 462.6
    clip = sum(math.prod(s) for p, s in got.items() if p.startswith("vision/"))
    proj = sum(math.prod(s) for p, s in got.items() if p.startswith("projector/"))
    assert round(clip / 1e9, 2) == 0.30 and round(proj / 1e9, 3) == 0.017


def test_7b_logical_axes_are_complete():
    """Every parameter has one logical name (or None) per dim, and stacked params start with 'layers'."""
    for p, var in _abstract_params().items():
        axes = var.get_metadata()["out_sharding"]
        assert axes is not None and len(axes) == len(var.shape), (p, axes, var.shape)
        if "/layers/" in p:
            assert axes[0] == "layers", (p, axes)
        else:
            assert "layers" not in axes, (p, axes)
