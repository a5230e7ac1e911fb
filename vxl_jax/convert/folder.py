"""The converted model folder (the inference format, written by ``convert_weights.py`` and by training's
export): layout, save, load, and streaming reads of single parameters. Not to be confused with the
train-state checkpoints of a run (:mod:`vxl_jax.train.checkpointing`).

Layout (written by ``convert_weights.py`` or :func:`save_converted`)::

    vxl_config.json        our VideoXLConfig
    params/                Orbax StandardCheckpointer tree of the NNX parameters (pure dict)
    fingerprint.json       the model's fingerprint (vxl_jax.convert.fingerprint)
    generation_config.json, tokenizer files (optional), conversion.json (summary)
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from transformers import AutoTokenizer

from vxl_jax.config import RuntimeConfig, VideoXLConfig
from vxl_jax.convert import fingerprint as fp
from vxl_jax.convert import names as N
from vxl_jax.convert import zarr_out
from vxl_jax.convert.errors import ConversionError
from vxl_jax.convert.layout import CONFIG_NAME, FINGERPRINT_NAME, PARAMS_DIR  # noqa: F401 - the folder's names
from vxl_jax.model.layers import DTYPES
from vxl_jax.model.videoxl import abstract_model
from vxl_jax.runtime.atomic_io import atomic_dir
from vxl_jax.runtime.sharding import param_shardings

_TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def check_converted_folder(path) -> VideoXLConfig:
    """Config of a converted folder; a clear error if ``path`` is something else (e.g. a raw HF folder)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ConversionError(f"checkpoint folder not found: {path}")
    if not os.path.isfile(os.path.join(path, CONFIG_NAME)):
        if os.path.isfile(os.path.join(path, "config.json")):
            raise ConversionError(
                f"{path} looks like a PyTorch/Hugging Face checkpoint (config.json, no {CONFIG_NAME}). "
                f"Convert it first: python convert_weights.py --src {path} --dst CONVERTED_DIR")
        raise ConversionError(f"{path} is not a converted Video-XL checkpoint ({CONFIG_NAME} missing)")
    if not os.path.isdir(os.path.join(path, PARAMS_DIR)):
        raise ConversionError(f"{path}: {PARAMS_DIR}/ (the Orbax parameter checkpoint) is missing")
    return VideoXLConfig.from_json(os.path.join(path, CONFIG_NAME))


def has_tokenizer(path) -> bool:
    """Whether a converted folder carries tokenizer files (``load_converted`` then returns a tokenizer)."""
    return any(os.path.isfile(os.path.join(os.fspath(path), f)) for f in _TOKENIZER_MARKERS)


def _abstract_pure(cfg: VideoXLConfig, dtype=None):
    graphdef, state = nnx.split(abstract_model(cfg))
    pure = nnx.to_pure_dict(state)
    if dtype is not None:
        pure = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), pure)
    return graphdef, state, pure


def save_converted(path, model, tokenizer=None, generation_config: dict | None = None) -> str:
    """Write an in-memory ``VideoXLModel`` as a converted folder (``path`` must not exist, or be empty), atomically:
    the folder appears complete (with its ``fingerprint.json``) or not at all. -> the model's fingerprint."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ConversionError(f"destination {path} already exists and is not empty")
    _, state = nnx.split(model)
    pure = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
    fingerprint = fp.of_arrays(N.flatten(pure))
    with atomic_dir(path, "converted folder") as tmp:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(os.path.join(tmp, PARAMS_DIR), pure)
        ckptr.wait_until_finished()
        model.cfg.to_json(os.path.join(tmp, CONFIG_NAME))
        if generation_config is not None:
            with open(os.path.join(tmp, "generation_config.json"), "w") as f:
                json.dump(generation_config, f, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        fp.write_record(tmp, fingerprint, "save_converted (the in-memory parameters)")
    return fingerprint


def load_converted(path, dtype: str = "float32", mesh=None, rules: str = "inference",
                   runtime: RuntimeConfig | None = None):
    """-> (cfg, VideoXLModel, tokenizer or None, generation_config dict) from a converted folder.

    Parameters are restored by Orbax into ``abstract_model(cfg)`` shapes and cast to ``dtype``
    (``float32`` | ``bfloat16`` | ``float16``); cfg.runtime param/compute dtypes are set to it.
    ``runtime``: build the model with this runtime instead (parameters cast to its ``param_dtype``;
    ``dtype`` is then ignored), e.g. a training preset's runtime.
    ``mesh``: restore each parameter straight onto its shards (``rules`` of :mod:`vxl_jax.runtime.sharding`), so
    no device ever holds the whole model.
    """
    path = os.path.abspath(os.fspath(path))
    cfg = check_converted_folder(path)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if runtime is not None:
        dtype = runtime.param_dtype
    cfg = cfg.with_runtime(param_dtype=dtype, compute_dtype=dtype) if runtime is None else cfg.replace(runtime=runtime)
    graphdef, state, abstract = _abstract_pure(cfg, DTYPES[dtype])
    if mesh is not None:
        shardings = nnx.to_pure_dict(param_shardings(state, mesh, rules))
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    try:
        restored = ocp.StandardCheckpointer().restore(os.path.join(path, PARAMS_DIR), abstract)
    except Exception as e:  # noqa: BLE001 - orbax raises many types for a bad tree
        raise ConversionError(f"{path}/{PARAMS_DIR}: cannot restore the parameters for this config ({e})") from e
    restored = jax.tree.map(lambda a, s: jnp.asarray(a, dtype=s.dtype), restored, abstract)
    nnx.replace_by_pure_dict(state, restored)
    model = nnx.merge(graphdef, state)

    tokenizer = None
    if has_tokenizer(path):
        tokenizer = AutoTokenizer.from_pretrained(path)
    gen = {}
    gp = os.path.join(path, "generation_config.json")
    if os.path.isfile(gp):
        with open(gp) as f:
            gen = json.load(f)
    return cfg, model, tokenizer, gen


def read_params(path, cfg: VideoXLConfig):
    """-> ``get(param_path, layer=None, index=None) -> np.ndarray``: one parameter, layer or block at a time.

    Reads zarr leaves directly when the folder was written by the converter; otherwise restores
    the whole tree once with Orbax. ``index`` (a tuple of slices) selects a block of the parameter.
    """
    root = os.path.join(os.fspath(path), PARAMS_DIR)
    shapes = N.param_shapes(cfg)
    leaves = {p: zarr_out.open_leaf(root, p) for p in shapes}
    if not all(v is not None for v in leaves.values()):
        _, _, abstract = _abstract_pure(cfg)
        leaves = {p: np.asarray(a) for p, a in N.flatten(ocp.StandardCheckpointer().restore(root, abstract)).items()}

    def get(p, layer=None, index=None):
        arr = leaves[p] if layer is None else leaves[p][layer]
        if index is not None:
            arr = arr[index]
        return np.asarray(arr.read().result()) if hasattr(arr, "read") else np.array(arr)
    return get
