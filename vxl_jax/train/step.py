"""Jitted, sharded train and eval steps over explicit state (``nnx.split``).

Train state (a pytree, checkpointed as is)::

    {"params": State (trainable Params), "frozen": State (the rest), "opt": optax state,
     "step": int32 [], "key": uint32 [2]}

One train step takes a batch ``{field: [accum, B, ...]}``, scans the ``accum`` micro-batches
summing ``windowed_loss`` sums and gradients, divides by the total number of scored tokens
(token-level mean over the whole accumulated batch, docs/algorithm.md §8), clips and applies AdamW. Each
window's compression ratio is drawn inside the step (:func:`vxl_jax.beacon.ratios.draw_ratio_idx`:
``randint(fold_in(fold_in(key, step), micro), [W], 0, len(ratios))``), so a resumed run draws exactly
the same ratios.
Parameters are sharded by the logical-axis rules (:mod:`vxl_jax.runtime.sharding`), optimizer moments
like their parameters, the batch over ``(data, fsdp)`` on its batch dim.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from vxl_jax.runtime import sharding as sh
from vxl_jax.runtime.distributed import check_process_batch
from vxl_jax.beacon.ratios import draw_ratio_idx
from vxl_jax.beacon.train import windowed_loss
from vxl_jax.config import VideoXLConfig
from vxl_jax.train import optim
from vxl_jax.train.config import TrainConfig


def input_tokens(mb, tokens_per_frame: int) -> jax.Array:
    """Tokens processed by the LM for a (micro-)batch: text + visual (``tokens_per_frame`` per frame), int32."""
    return (jnp.sum(mb["prefix_len"]) + jnp.sum(mb["suffix_len"])
            + tokens_per_frame * jnp.sum(mb["num_frames"])).astype(jnp.int32)


@dataclasses.dataclass
class Trainer:
    """Holds the static pieces (graphdef, model config, optimizer, shardings) and the jitted steps.

    ``cfg`` is the model's config (``graphdef``'s): its ``runtime`` (attention backend, remat, dtypes,
    sharding rules) is the one source of runtime settings for the loss; :attr:`rules` (``cfg.runtime.sharding``)
    is used for the activation constraints inside the steps.
    """

    graphdef: object
    cfg: VideoXLConfig
    tx: optax.GradientTransformation
    schedule: object
    ratios: tuple[int, ...]
    mesh: object
    state_shardings: dict
    keep_memory: bool = True

    @property
    def rules(self) -> str:
        """The sharding-rules preset of state, batches and activations: ``cfg.runtime.sharding``."""
        return self.cfg.runtime.sharding

    def loss_fn(self, params, frozen, mb, ratio_idx):
        model = nnx.merge(self.graphdef, params, frozen)
        return windowed_loss(model, mb, ratio_idx, ratios=self.ratios, keep_memory=self.keep_memory)

    def _train_step(self, state, batch):
        with sh.activation_sharding(self.mesh, self.rules):  # traced under the rules, backward included
            return self._train_step_body(state, batch)

    def _train_step_body(self, state, batch):
        accum, _, F = batch["pixels"].shape[:3]
        W = self.cfg.beacon.windows_for_frames(F)
        value_and_grad = jax.value_and_grad(self.loss_fn, has_aux=True)

        def grad_fn(mb, i):
            """Micro-batch i -> ((loss_sum, n_tokens), grads), its window ratios drawn from (key, step, i)."""
            idx = draw_ratio_idx(state["key"], state["step"], i, W, len(self.ratios))
            return value_and_grad(state["params"], state["frozen"], mb, idx)

        def micro(carry, xs):
            g_acc, l_acc, n_acc = carry
            (loss_sum, n), g = grad_fn(*xs)
            g_acc = jax.tree.map(lambda a, b: a + b.astype(a.dtype), g_acc, g)
            return (g_acc, l_acc + loss_sum, n_acc + n), None

        if accum == 1:  # no fp32 accumulator (a whole extra copy of the parameters) for a single micro-batch
            (loss_sum, n), grads = grad_fn(jax.tree.map(lambda x: x[0], batch), 0)
            grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        else:
            zeros = sh.constrain_params(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state["params"]),
                                        like=state["params"])
            (grads, loss_sum, n), _ = jax.lax.scan(micro, (zeros, jnp.float32(0), jnp.int32(0)),
                                                   (batch, jnp.arange(accum, dtype=jnp.int32)))
        denom = jnp.maximum(n, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state["params"])
        updates, opt = self.tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss_sum / denom, "n_tokens": n, "grad_norm": optax.tree.norm(grads),
                   "lr": self.schedule(state["step"]),
                   "input_tokens": input_tokens(batch, self.cfg.beacon.tokens_per_frame)}
        new = dict(state, params=params, opt=opt, step=state["step"] + 1)
        return new, metrics

    def _eval_step(self, state, batch, ratio_idx):
        """batch {field: [1, B, ...]} (one micro-batch), ratio_idx [W] -> (loss_sum, n_tokens)."""
        mb = jax.tree.map(lambda x: x[0], batch)
        with sh.activation_sharding(self.mesh, self.rules):
            loss_sum, n = self.loss_fn(state["params"], state["frozen"], mb, ratio_idx)
        return loss_sum, n

    def compile(self):
        sd = self.state_shardings
        rep = NamedSharding(self.mesh, PartitionSpec())
        self.train_step = jax.jit(self._train_step, in_shardings=(sd, None), out_shardings=(sd, rep),
                                  donate_argnums=(0,))
        self.eval_step = jax.jit(self._eval_step, in_shardings=(sd, None, rep), out_shardings=(rep, rep))
        return self


def build_trainer(model, tcfg: TrainConfig, mesh, ratios: tuple[int, ...]) -> tuple[Trainer, dict]:
    """The one way to set training up: optimizer, sharded state and the :class:`Trainer`, with the sharding
    rules of ``model.cfg.runtime.sharding`` used for state, batches and activations. -> (trainer, state)."""
    tx = optim.make_optimizer(tcfg)
    graphdef, state, shardings = init_state(model, tx, optim.trainable_filter(tcfg.trainable, tcfg.freeze_vision),
                                            mesh, tcfg.seed)
    trainer = Trainer(graphdef, model.cfg, tx, optim.lr_schedule(tcfg), tuple(ratios), mesh, shardings,
                      keep_memory=tcfg.keep_memory)
    return trainer, state


def split_model(model, trainable_filter):
    """-> (graphdef, trainable Params State, everything else State)."""
    return nnx.split(model, trainable_filter, ...)


def state_shardings(abstract_state: dict, tx, mesh, rules: str) -> dict:
    """Shardings for the train state: params/frozen by the rules table (the model's ``cfg.runtime.sharding``),
    optimizer moments like their params (``optax.tree_map_params``), scalars and counters replicated."""
    rep = NamedSharding(mesh, PartitionSpec())
    p_sh = sh.param_shardings(abstract_state["params"], mesh, rules)
    f_sh = sh.param_shardings(abstract_state["frozen"], mesh, rules)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_state["opt"], p_sh,
                                   transform_non_params=lambda _: rep)
    return {"params": p_sh, "frozen": f_sh, "opt": opt_sh, "step": rep, "key": rep}


def init_state(model, tx, trainable_filter, mesh, seed: int):
    """Sharded initial train state for ``model`` (rules ``model.cfg.runtime.sharding``) -> (graphdef, state,
    shardings)."""
    rules = model.cfg.runtime.sharding
    graphdef, params, frozen = split_model(model, trainable_filter)
    abstract = {"params": params, "frozen": frozen, "opt": jax.eval_shape(tx.init, params),
                "step": jax.ShapeDtypeStruct((), jnp.int32), "key": jax.ShapeDtypeStruct((2,), jnp.uint32)}
    shardings = state_shardings(abstract, tx, mesh, rules)
    params = jax.device_put(params, shardings["params"])
    frozen = jax.device_put(frozen, shardings["frozen"])
    opt = jax.jit(tx.init, out_shardings=shardings["opt"])(params)
    state = {"params": params, "frozen": frozen, "opt": opt,
             "step": jax.device_put(jnp.int32(0), shardings["step"]),
             "key": jax.device_put(jax.random.PRNGKey(seed), shardings["key"])}
    return graphdef, state, shardings


def abstract_state(state) -> dict:
    """ShapeDtypeStruct tree (with shardings) of a concrete train state."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def batch_shardings(mesh, batch: dict, rules: str) -> dict:
    """Per field ``[accum, B, ...]``: dim 1 over the batch mesh axes of ``rules`` (the model's
    ``cfg.runtime.sharding``; dropped when they don't divide B)."""
    out = {}
    for k, v in batch.items():
        if v.ndim < 2:
            out[k] = NamedSharding(mesh, PartitionSpec())
            continue
        spec = sh.batch_sharding(mesh, v.shape[1:], rules).spec
        out[k] = NamedSharding(mesh, PartitionSpec(None, *spec))
    return out


def to_global(batch: dict, mesh, global_batch: int, rules: str) -> dict:
    """Process-local numpy step ``[accum, b_local, ...]`` -> global jax arrays ``[accum, B, ...]``."""
    shapes = {k: (v.shape[0], global_batch) + v.shape[2:] for k, v in batch.items()}
    shard = batch_shardings(mesh, {k: _Shape(s) for k, s in shapes.items()}, rules)
    if jax.process_count() > 1:
        key = next(iter(batch))
        check_process_batch(shard[key], shapes[key], batch[key].shape[1])
    return {k: jax.make_array_from_process_local_data(shard[k], np.asarray(v), shapes[k]) for k, v in batch.items()}


class _Shape:
    """Shape-only stand-in for :func:`batch_shardings`."""

    def __init__(self, shape):
        self.shape, self.ndim = tuple(shape), len(shape)
