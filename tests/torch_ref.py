"""PyTorch references for the tests: tiny random transformers models and released-layout checkpoints.

Weights are random with non-trivial scales (matrices N(0, 1/fan_in), embeddings N(0, 1), biases
N(0, 0.1^2), norm weights 1 + N(0, 0.1^2)), so a wrong transpose or a swapped tensor shows.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from vxl_jax.convert.names import VISION_PREFIX

TINY_LM = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, rope_theta=1_000_000.0, rms_norm_eps=1e-6, max_position_embeddings=32768,
               bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
TINY_CLIP = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=336,
                 patch_size=14, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5)
BEACON_FIELDS = dict(beacon_window=1440, beacon_stride=1440, beacon_attn="full-coverage", beacon_ratio=[2, 4, 8],
                     beacon_ratio_mix="step-random", beacon_param=["q", "k", "v"], beacon_embed_init="eos",
                     beacon_sink_size=0, beacon_attend_prev=True, beacon_pos="interleave", beacon_parallel_window=1,
                     beacon_accum=True, enable_beacon=True)


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif "position_embedding" in name or "class_embedding" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
    return module.eval()


def tiny_qwen2(seed: int = 0, **over):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**{**TINY_LM, **over}, attn_implementation="eager")
    return randomize_(Qwen2ForCausalLM(cfg).float(), seed)


def tiny_clip(seed: int = 1, **over):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(**{**TINY_CLIP, **over}, attn_implementation="eager")
    return randomize_(CLIPVisionModel(cfg).float(), seed)


def numpy_state(module: torch.nn.Module, prefix: str = "") -> dict[str, np.ndarray]:
    return {prefix + k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def released_tensors(qwen, clip, seed: int = 2, beacon: bool = True) -> dict[str, np.ndarray]:
    """The released Video-XL state dict: Qwen2 + beacon q/k/v + beacon embedding + projector + CLIP."""
    rng = np.random.default_rng(seed)
    out = numpy_state(qwen)
    D = qwen.config.hidden_size
    C = clip.config.hidden_size
    out.update({VISION_PREFIX + k.removeprefix("vision_model."): v for k, v in numpy_state(clip).items()})
    out["model.mm_projector.0.weight"] = (rng.normal(size=(D, C)) / C ** 0.5).astype(np.float32)
    out["model.mm_projector.0.bias"] = (0.1 * rng.normal(size=D)).astype(np.float32)
    out["model.mm_projector.2.weight"] = (rng.normal(size=(D, D)) / D ** 0.5).astype(np.float32)
    out["model.mm_projector.2.bias"] = (0.1 * rng.normal(size=D)).astype(np.float32)
    if beacon:
        out["model.beacon_embed_tokens.weight"] = rng.normal(size=(1, D)).astype(np.float32)
        for i in range(qwen.config.num_hidden_layers):
            for x in "qkv":
                w = out[f"model.layers.{i}.self_attn.{x}_proj.weight"]
                b = out[f"model.layers.{i}.self_attn.{x}_proj.bias"]
                out[f"model.layers.{i}.self_attn.beacon_{x}_proj.weight"] = (
                    rng.normal(size=w.shape) / D ** 0.5).astype(np.float32)
                out[f"model.layers.{i}.self_attn.beacon_{x}_proj.bias"] = (0.1 * rng.normal(size=b.shape)).astype(
                    np.float32)
    return out


def hf_config(qwen, clip, model_type: str = "llava_qwen") -> dict:
    c = {k: getattr(qwen.config, k, None) for k in TINY_LM}
    c["rope_theta"] = (getattr(qwen.config, "rope_parameters", None) or {}).get("rope_theta", c["rope_theta"])
    c = {k: (TINY_LM[k] if v is None else v) for k, v in c.items()}
    return {**c, "architectures": ["LlavaQwenForCausalLM"], "model_type": model_type, "hidden_act": "silu",
            "torch_dtype": "float32", "use_sliding_window": False, "rope_scaling": None, **BEACON_FIELDS,
            "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": clip.config.hidden_size,
            "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_spatial_pool_stride": 2,
            "mm_spatial_pool_mode": "average", "mm_resampler_type": "spatial_pool", "mm_patch_merge_type": "unires",
            "mm_vision_tower": "clip_tiny_missing_folder", "image_aspect_ratio": "anyres", "use_mm_proj": True}


def _to_torch(a: np.ndarray) -> torch.Tensor:
    import ml_dtypes

    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


def write_checkpoint(folder: str, tensors: dict[str, np.ndarray], config: dict | None = None,
                     vision_config: dict | None = None, fmt: str = "safetensors", shards: int = 1) -> str:
    """Write ``tensors`` as ``model.safetensors`` / sharded safetensors / ``pytorch_model*.bin`` (+ index)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    names = list(tensors)
    groups = [names[i::shards] for i in range(shards)]
    ext = "safetensors" if fmt == "safetensors" else "bin"
    base = "model" if ext == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"{base}.{ext}" if shards == 1 else f"{base}-{i + 1:05d}-of-{shards:05d}.{ext}"
        sd = {n: _to_torch(tensors[n]) for n in group}
        if ext == "safetensors":
            save_file(sd, os.path.join(folder, fname), metadata={"format": "pt"})
        else:
            torch.save(sd, os.path.join(folder, fname))
        weight_map.update({n: fname for n in group})
    if shards > 1:
        with open(os.path.join(folder, f"{base}.{ext}.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    if config is not None:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(folder, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id"),
                       "do_sample": False}, f)
    if vision_config is not None:
        with open(os.path.join(folder, "vision_tower_config.json"), "w") as f:
            json.dump(vision_config, f, indent=2)
    return folder


def clip_config_dict(clip) -> dict:
    return {**{k: getattr(clip.config, k) for k in TINY_CLIP}, "model_type": "clip_vision_model",
            "architectures": ["CLIPVisionModel"]}


def write_released(folder: str, qwen, clip, beacon: bool = True, fmt: str = "safetensors", shards: int = 1,
                   seed: int = 2) -> dict[str, np.ndarray]:
    """Tiny Video-XL checkpoint folder in the released layout; returns the tensors written."""
    tensors = released_tensors(qwen, clip, seed=seed, beacon=beacon)
    write_checkpoint(folder, tensors, hf_config(qwen, clip), clip_config_dict(clip), fmt=fmt, shards=shards)
    return tensors


def videoxl_config_for(qwen, clip, **runtime):
    """Our VideoXLConfig matching the torch models (via the same from_hf_config the converter uses).

    A CLIP image size other than 336 gets ``beacon.tokens_per_frame`` = its pooled grid.
    """
    import dataclasses

    from vxl_jax.config import from_hf_config, vision_from_hf

    vis = clip_config_dict(clip)
    cfg = from_hf_config(hf_config(qwen, clip), vision={**vis, "image_size": 336})
    if vis["image_size"] != 336:
        v = vision_from_hf(vis)
        tpf = (v.grid // cfg.projector.pool_stride) ** 2
        cfg = dataclasses.replace(cfg, vision=v, beacon=dataclasses.replace(cfg.beacon, tokens_per_frame=tpf))
    return cfg.with_runtime(**runtime) if runtime else cfg
