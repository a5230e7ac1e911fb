"""Sharding by logical axis names (MaxText style) over the mesh ``("data", "fsdp", "tensor")``.

Every parameter carries a tuple of logical axis names in its ``out_sharding`` metadata (see
:mod:`vxl_jax.model.layers`), e.g. ``('layers', 'embed', 'heads', 'head_dim')`` for a q kernel
``[L, D, H, Dh]``. A *rules table* maps each logical name to candidate mesh axes; the mapping
into a :class:`~jax.sharding.PartitionSpec` is resolved per array, left to right:

* a mesh axis is used for a dim only if its size divides what is left of that dim (otherwise the
  dim falls back to fewer axes, or replication: Qwen2-7B has 4 KV heads, so ``kv_heads`` on a
  ``tensor`` axis of 8 is replicated);
* one mesh axis is never used twice in one spec (the first dim that claims it wins);
* mesh axes of size 1 are left out, so specs show only real sharding.

Presets (:data:`PRESETS`):

``fsdp``       training on TPU/GPU pods. Weights: ``embed``/``vis_embed`` over ``fsdp`` (each layer's
               weights are all-gathered just in time), heads/mlp/vocab over ``tensor`` (a no-op
               with ``tensor=1``, i.e. pure FSDP). Activations: batch over ``(data, fsdp)``, nothing
               else sharded.
``fsdp_tp``    same weight placement, plus tensor-parallel *activations* (heads, mlp, vocab and the
               KV cache's heads over ``tensor``): for meshes with ``tensor > 1``.
``inference``  pure tensor parallelism: no dim of a weight is gathered at run time. heads/mlp/vocab
               over ``(tensor, fsdp)`` (both non-data axes act as model parallel), ``embed``
               replicated, ``kv_heads`` over ``tensor`` only; batch over ``data``.

Entry points: :func:`make_mesh`, :func:`logical_to_spec`, :func:`param_shardings`,
:func:`shard_model`, :func:`batch_sharding`, :func:`memory_shardings` (multi-process start-up:
:mod:`vxl_jax.runtime.distributed`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from vxl_jax.config import MeshConfig

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# Logical names used by parameters (vxl_jax/model/*.py).
PARAM_AXES = ("layers", "embed", "embed_in", "heads", "kv_heads", "head_dim", "mlp", "vocab", "norm",
              "vis_embed", "vis_heads", "vis_mlp")
# Logical names for activations / runtime state (inputs, KV memory, logits).
ACTIVATION_AXES = ("batch", "frames", "length", "act_embed", "act_heads", "act_kv_heads", "act_mlp", "act_vocab",
                   "cache_layers", "cache_batch", "cache_slots", "cache_kv_heads", "loss_vocab")

Rules = tuple  # tuple of (logical name, None | mesh axis | tuple of mesh axes); repeated names = fallbacks

_COMMON_REPLICATED = (
    ("layers", None), ("head_dim", None), ("norm", None),
    ("length", None), ("act_embed", None), ("cache_layers", None), ("cache_slots", None),
)

# The training loss is vocab-parallel in every preset: the vocab matrices and the logits are split over
# the vocabulary on all model-parallel axes while the logits and their gradients are computed
# (:func:`vxl_jax.beacon.train.vocab_parallel_loss`), never gathered whole on one chip.
_LOSS_RULES: Rules = (("loss_vocab", ("tensor", "fsdp")),)

FSDP_RULES: Rules = _COMMON_REPLICATED + _LOSS_RULES + (
    # weights
    ("embed", "fsdp"), ("vis_embed", "fsdp"),
    ("embed_in", "tensor"),
    ("heads", "tensor"), ("kv_heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"),
    ("vis_heads", "tensor"), ("vis_mlp", "tensor"),
    # activations
    ("batch", ("data", "fsdp")), ("frames", ("data", "fsdp")), ("cache_batch", ("data", "fsdp")),
    ("act_heads", None), ("act_kv_heads", None), ("act_mlp", None), ("act_vocab", None),
    ("cache_kv_heads", None),
)

FSDP_TP_RULES: Rules = _COMMON_REPLICATED + _LOSS_RULES + (
    ("embed", "fsdp"), ("vis_embed", "fsdp"),
    ("embed_in", "tensor"),
    ("heads", "tensor"), ("kv_heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"),
    ("vis_heads", "tensor"), ("vis_mlp", "tensor"),
    ("batch", ("data", "fsdp")), ("frames", ("data", "fsdp")), ("cache_batch", ("data", "fsdp")),
    ("act_heads", "tensor"), ("act_kv_heads", "tensor"), ("act_mlp", "tensor"), ("act_vocab", "tensor"),
    ("cache_kv_heads", "tensor"),
)

INFERENCE_RULES: Rules = _COMMON_REPLICATED + _LOSS_RULES + (
    ("embed", None), ("vis_embed", None),
    ("embed_in", ("tensor", "fsdp")),
    ("heads", ("tensor", "fsdp")), ("kv_heads", "tensor"), ("mlp", ("tensor", "fsdp")),
    ("vocab", ("tensor", "fsdp")),
    ("vis_heads", ("tensor", "fsdp")), ("vis_mlp", ("tensor", "fsdp")),
    ("batch", "data"), ("frames", ("data", "fsdp")), ("cache_batch", "data"),
    ("act_heads", ("tensor", "fsdp")), ("act_kv_heads", "tensor"), ("act_mlp", ("tensor", "fsdp")),
    ("act_vocab", ("tensor", "fsdp")), ("cache_kv_heads", "tensor"),
)

PRESETS: dict[str, Rules] = {"fsdp": FSDP_RULES, "fsdp_tp": FSDP_TP_RULES, "inference": INFERENCE_RULES}


# --------------------------------------------------------------------------------------------
# Rules and specs


class RuleTable(dict):
    """Normalised rules: ``{logical name: [candidate tuple of mesh axes, ...]}``."""


def get_rules(rules: str | Rules | Mapping | None) -> RuleTable:
    """Normalise a preset name, a pair list or a dict into ``{logical: [candidate mesh-axis tuples]}``.

    A candidate ``()`` means "replicated". Repeated names in a pair list are tried in order.
    """
    if isinstance(rules, RuleTable):
        return rules
    if rules is None:
        rules = "fsdp"
    if isinstance(rules, str):
        if rules not in PRESETS:
            raise ValueError(f"unknown sharding preset {rules!r}; known: {sorted(PRESETS)}")
        rules = PRESETS[rules]
    pairs = rules.items() if isinstance(rules, Mapping) else rules
    out = RuleTable()
    for name, target in pairs:
        if target is None:
            cand: tuple[str, ...] = ()
        elif isinstance(target, str):
            cand = (target,)
        else:
            cand = tuple(target)
        for ax in cand:
            if ax not in MESH_AXES:
                raise ValueError(f"sharding rule {name!r} -> {target!r}: unknown mesh axis {ax!r}; mesh axes are {MESH_AXES}")
        out.setdefault(name, []).append(cand)
    return out


def logical_to_spec(axes: Sequence[str | None] | None, shape: Sequence[int], rules, mesh: Mesh) -> PartitionSpec:
    """Map logical ``axes`` (one name or None per dim of ``shape``) to a PartitionSpec on ``mesh``.

    Per dim, the first rule candidate that shards it at all is used; within a candidate, each mesh
    axis is kept only if unused so far in this spec, of size > 1 and dividing the remaining dim.
    ``axes=None`` (no metadata) gives a fully replicated spec.
    """
    table = get_rules(rules)
    if axes is None:
        return PartitionSpec()
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
    sizes = dict(mesh.shape)
    used: set[str] = set()
    entries: list[Any] = []
    for name, dim in zip(axes, shape):
        if name is None:
            entries.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no sharding rule; add it to the rules table "
                             f"(known: {sorted(table)})")
        chosen: tuple[str, ...] = ()
        for cand in table[name]:
            picked, prod = [], 1
            for ax in cand:
                if ax not in sizes:
                    raise ValueError(f"mesh has no axis {ax!r} (axes: {tuple(sizes)})")
                n = sizes[ax]
                if ax in used or n == 1 or dim % (prod * n):
                    continue
                picked.append(ax)
                prod *= n
            if picked:
                chosen = tuple(picked)
                break
        used.update(chosen)
        entries.append(None if not chosen else chosen[0] if len(chosen) == 1 else chosen)
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def _axes_of(var) -> tuple | None:
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    axes = meta.get("out_sharding", None)
    if axes is None:
        axes = meta.get("sharding_names", None)
    return None if axes is None else tuple(axes)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _state_of(state_or_model):
    if isinstance(state_or_model, nnx.Module):
        return nnx.state(state_or_model)
    return state_or_model


def param_specs(state_or_model, mesh: Mesh, rules=None):
    """Same tree as ``nnx.split(model)[1]`` (or the given State) with each Variable's value a PartitionSpec."""
    table = get_rules(rules)
    state = _state_of(state_or_model)

    def spec(var):
        return var.replace(logical_to_spec(_axes_of(var), var.shape, table, mesh))

    return jax.tree.map(spec, state, is_leaf=_is_var)


def param_shardings(state_or_model, mesh: Mesh, rules=None):
    """Pytree of NamedSharding matching ``nnx.split(model)[1]`` (Variables whose value is the sharding).

    Usable as ``jax.device_put`` target, ``jax.jit`` in/out_shardings, or for Orbax restore targets.
    """
    specs = param_specs(state_or_model, mesh, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def abstract_sharded_state(state_or_model, mesh: Mesh, rules=None):
    """Abstract state (ShapeDtypeStruct leaves carrying their NamedSharding): an Orbax restore target."""
    state = _state_of(state_or_model)
    shardings = param_shardings(state, mesh, rules)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def shard_state(state, mesh: Mesh, rules=None):
    """``jax.device_put`` a concrete State onto ``mesh`` following the rules."""
    return jax.device_put(state, param_shardings(state, mesh, rules))


def shard_model(model: nnx.Module, mesh: Mesh, rules=None) -> nnx.Module:
    """Return a copy of ``model`` whose arrays are placed (sharded) on ``mesh`` per the rules."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, shard_state(state, mesh, rules))


def spec_is_sharded(spec: PartitionSpec, mesh: Mesh) -> bool:
    """True when ``spec`` splits at least one dim over a mesh axis of size > 1."""
    sizes = dict(mesh.shape)
    for e in spec:
        for ax in (e if isinstance(e, tuple) else (e,)):
            if ax is not None and sizes[ax] > 1:
                return True
    return False


def bytes_per_device(shape: Sequence[int], dtype, spec: PartitionSpec, mesh: Mesh) -> int:
    """Bytes of one device's shard of an array ``shape``/``dtype`` placed with ``spec``."""
    sizes = dict(mesh.shape)
    shard = list(shape)
    for i, e in enumerate(spec):
        for ax in (e if isinstance(e, tuple) else (e,)):
            if ax is not None:
                shard[i] //= sizes[ax]
    return int(math.prod(shard)) * np.dtype(dtype).itemsize


# --------------------------------------------------------------------------------------------
# Activations and runtime state


def logical_sharding(mesh: Mesh, axes: Sequence[str | None], shape: Sequence[int], rules=None) -> NamedSharding:
    """NamedSharding of an activation of ``shape`` with logical ``axes``."""
    return NamedSharding(mesh, logical_to_spec(axes, shape, rules, mesh))


def batch_sharding(mesh: Mesh, shape: Sequence[int] | None = None, rules=None) -> NamedSharding:
    """Inputs [B, ...] sharded over the batch dim (``(data, fsdp)`` in the fsdp presets).

    With ``shape``, axes that do not divide B are dropped (fallback to replication); without it,
    B must be divisible by the product of the batch mesh axes.
    """
    if shape is None:
        cand = get_rules(rules)["batch"][0]
        cand = tuple(a for a in cand if dict(mesh.shape)[a] > 1)
        return NamedSharding(mesh, PartitionSpec(cand if cand else None))
    return logical_sharding(mesh, ("batch",) + (None,) * (len(shape) - 1), shape, rules)


MEMORY_AXES = ("cache_layers", "cache_batch", "cache_slots", "cache_kv_heads", "head_dim")

_ACTIVATION_CONTEXT: list[tuple[Mesh, Any]] = []


class activation_sharding:
    """``with activation_sharding(mesh, rules):`` while tracing makes :func:`constrain` pin
    activations to the rules' shardings (e.g. the batch of every window inside the window scan,
    where XLA's propagation alone may fall back to replication). Outside it, :func:`constrain` is
    a no-op, so model code runs unchanged on one device."""

    def __init__(self, mesh: Mesh | None, rules=None):
        self.entry = None if mesh is None else (mesh, get_rules(rules))

    def __enter__(self):
        _ACTIVATION_CONTEXT.append(self.entry)
        return self

    def __exit__(self, *exc):
        _ACTIVATION_CONTEXT.pop()


def active_sharding():
    """(mesh, rules) of the innermost :class:`activation_sharding`, or None."""
    return _ACTIVATION_CONTEXT[-1] if _ACTIVATION_CONTEXT else None


def constrain(x, axes: Sequence[str | None]):
    """``with_sharding_constraint`` of ``x`` to logical ``axes`` under :class:`activation_sharding`."""
    if active_sharding() is None:
        return x
    mesh, rules = active_sharding()
    return jax.lax.with_sharding_constraint(x, logical_sharding(mesh, axes, x.shape, rules))


def constrain_params(tree, like=None):
    """Pin a parameter-shaped tree (e.g. fp32 gradient accumulators) to the parameters' shardings.

    ``like``: the State whose Variables carry the logical axes (default: ``tree`` itself)."""
    if active_sharding() is None:
        return tree
    mesh, rules = active_sharding()
    specs = param_specs(tree if like is None else like, mesh, rules)
    return jax.tree.map(lambda spec, x: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec)), specs, tree,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def constrain_memory(k, v):
    """Pin KV memory k/v [L, B, M, KV, Dh] (or their cotangents) to the memory axes."""
    return constrain(k, MEMORY_AXES), constrain(v, MEMORY_AXES)


def memory_shardings(mem, mesh: Mesh, rules=None):
    """Shardings for a :class:`vxl_jax.beacon.memory.KVMemory`: k/v [L, B, M, KV, Dh], counters [B]."""
    k = logical_sharding(mesh, MEMORY_AXES, mem.k.shape, rules)
    v = logical_sharding(mesh, MEMORY_AXES, mem.v.shape, rules)
    b = logical_sharding(mesh, ("cache_batch",), mem.length.shape, rules)
    return mem.replace(k=k, v=v, length=b, n_prefix=b, n_beacons=b, n_text=b)


# --------------------------------------------------------------------------------------------
# Mesh and multi-host


def make_mesh(mesh_cfg: MeshConfig | Sequence[int] | None = None, devices: Sequence | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` Mesh with Auto axis types over ``devices`` (default: all).

    ``mesh_cfg`` may be a MeshConfig (-1 = remaining devices) or a 3-tuple of sizes. On TPU/GPU the
    device order comes from ``mesh_utils.create_device_mesh`` (topology aware).
    """
    if mesh_cfg is None:
        mesh_cfg = MeshConfig()
    if not isinstance(mesh_cfg, MeshConfig):
        mesh_cfg = MeshConfig(*mesh_cfg)
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_cfg.shape(len(devices))
    if devices[0].platform == "cpu":
        arr = np.array(devices, dtype=object).reshape(shape)
    else:  # pragma: no cover - needs accelerators
        from jax.experimental import mesh_utils

        try:
            arr = mesh_utils.create_device_mesh(shape, devices)
        except Exception as e:  # noqa: BLE001 - odd topologies: fall back to plain order
            log.warning("create_device_mesh(%s) failed (%s); using device order", shape, e)
            arr = np.array(devices, dtype=object).reshape(shape)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def describe(mesh: Mesh) -> str:
    """One line, e.g. ``mesh data=1 fsdp=4 tensor=2 (8 cpu devices)``."""
    sizes = " ".join(f"{k}={v}" for k, v in mesh.shape.items())
    return f"mesh {sizes} ({mesh.devices.size} {mesh.devices.flat[0].platform} devices)"


def iter_params(state_or_model) -> Iterable[tuple[str, Any]]:
    """Yield ``(path 'a/b/c', Variable)`` for every variable of a model or State."""
    state = _state_of(state_or_model)
    for path, var in jax.tree_util.tree_leaves_with_path(state, is_leaf=_is_var):
        yield "/".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path), var


# --------------------------------------------------------------------------------------------
# Inference placement (VideoXL.load(..., mesh=...), infer.py --mesh)

INFERENCE_PRESET = "inference"


def parse_mesh(text: str) -> dict[str, int]:
    """``"tensor=4"`` / ``"data=2,tensor=4"`` -> ``{"tensor": 4}`` / ``{"data": 2, "tensor": 4}`` (axes of
    :data:`MESH_AXES`; sizes >= 1, or -1 for the remaining devices)."""
    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in MESH_AXES:
            raise ValueError(f"mesh {text!r}: expected axis=size pairs over {MESH_AXES}, e.g. 'tensor=4'")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ValueError(f"mesh {text!r}: size of {name!r} is not an integer: {value!r}") from None
    if not sizes:
        raise ValueError(f"mesh {text!r}: no axis given, e.g. 'tensor=4'")
    return sizes


def inference_mesh(spec: Mesh | Mapping[str, int] | str | None, devices: Sequence | None = None) -> Mesh | None:
    """A ``(data, fsdp, tensor)`` Mesh for inference from ``spec``, or None for single-device runs.

    ``spec``: a Mesh (returned as is; its axes must be :data:`MESH_AXES`), a dict of axis sizes
    (missing axes are 1, one -1 takes the remaining devices), or its text form (:func:`parse_mesh`).
    A dict asking for fewer devices than there are uses the first ones (``{"tensor": 4}`` on 8
    devices: devices 0-3).
    """
    if spec is None:
        return None
    if isinstance(spec, Mesh):
        if tuple(spec.axis_names) != MESH_AXES:
            raise ValueError(f"mesh axes must be {MESH_AXES}, got {tuple(spec.axis_names)}")
        return spec
    sizes = parse_mesh(spec) if isinstance(spec, str) else dict(spec)
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh {sizes}: unknown axes {sorted(unknown)}; axes are {MESH_AXES}")
    devices = list(jax.devices() if devices is None else devices)
    dims = [int(sizes.get(a, 1)) for a in MESH_AXES]
    if -1 not in dims:
        need = math.prod(dims)
        if need < 1 or any(d < 1 for d in dims):
            raise ValueError(f"mesh {sizes}: sizes must be >= 1 (or one -1)")
        if need > len(devices):
            raise ValueError(f"mesh {sizes} needs {need} devices, only {len(devices)} available")
        devices = devices[:need]
    return make_mesh(MeshConfig(*dims), devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def place_memory(mem, mesh: Mesh, rules=INFERENCE_PRESET):
    """``jax.device_put`` a KVMemory onto its :func:`memory_shardings` (a no-op when already there)."""
    return jax.device_put(mem, memory_shardings(mem, mesh, rules))


def place_replicated(tree, mesh: Mesh):
    """``jax.device_put`` every array of ``tree`` replicated over ``mesh`` (a no-op for those already so)."""
    rep = replicated(mesh)
    return jax.tree.map(lambda x: x if getattr(x, "sharding", None) == rep else jax.device_put(x, rep), tree)


def pin_memory(mem):
    """Under :class:`activation_sharding`: a KVMemory's K/V and counters pinned to the memory axes."""
    if active_sharding() is None:
        return mem
    k, v = constrain_memory(mem.k, mem.v)
    counters = {f: constrain(getattr(mem, f), ("cache_batch",)) for f in ("length", "n_prefix", "n_beacons", "n_text")}
    return mem.replace(k=k, v=v, **counters)


def pin_replicated(x):
    """Under :class:`activation_sharding`: ``x`` replicated (outputs the host reads back, e.g. logits)."""
    if active_sharding() is None:
        return x
    return jax.lax.with_sharding_constraint(x, replicated(active_sharding()[0]))
