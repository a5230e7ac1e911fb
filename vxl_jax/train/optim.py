"""AdamW with warmup + cosine, weight decay on matrices only, global-norm clipping; trainable-part filters."""

from __future__ import annotations

import jax
import optax
from flax import nnx

from vxl_jax.train.config import TrainConfig


def trainable_filter(trainable: str, freeze_vision: bool = False):
    """nnx filter of the parameters that get gradients.

    ``all`` (stage 2: LLM incl. embeddings/lm_head, beacon params, projector, CLIP), ``projector``
    (stage 1), ``projector+lm``, ``lm``; ``freeze_vision`` removes the CLIP tower from ``all``.
    """
    tops = {"all": ("vision", "projector", "lm"), "projector": ("projector",),
            "projector+lm": ("projector", "lm"), "lm": ("lm",)}[trainable]
    if freeze_vision:
        tops = tuple(t for t in tops if t != "vision")
    if not tops:
        raise ValueError("nothing left to train (train.trainable with train.freeze_vision)")
    return nnx.All(nnx.Param, lambda path, x: str(path[0]) in tops)


def lr_schedule(t: TrainConfig):
    warmup = int(round(t.warmup_ratio * t.steps))
    return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=t.lr, warmup_steps=warmup,
                                              decay_steps=max(t.steps, warmup + 1), end_value=t.lr * t.min_lr_ratio)


def decay_mask(params):
    """True for weight matrices/embeddings (kernel, embed, lm_head); no decay on biases, norms, beacon embed."""
    def leaf(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return name in ("kernel", "embed", "lm_head", "patch_embed", "pos_embed")
    return jax.tree_util.tree_map_with_path(leaf, params)


def make_optimizer(t: TrainConfig) -> optax.GradientTransformation:
    """clip_by_global_norm(clip_norm) -> adamw(schedule, b1, b2, eps, weight_decay on matrices)."""
    parts = []
    if t.clip_norm and t.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(t.clip_norm))
    parts.append(optax.adamw(lr_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts)
