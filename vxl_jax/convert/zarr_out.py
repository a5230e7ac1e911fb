"""Write an Orbax (StandardCheckpointer, non-OCDBT) checkpoint one slice at a time.

Orbax writes the tree metadata for a skeleton of the right structure and dtypes (1-element
leaves); every leaf is then re-created at its full shape as a zarr array with tensorstore, and
filled by layer slices or row/column blocks as the converter produces them. Peak memory is one
block, not the model. ``StandardCheckpointer().restore(path, abstract_tree)`` reads the result.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from vxl_jax.convert.names import nest


def leaf_dir(root: str, path: tuple[str, ...]) -> str:
    return os.path.join(root, ".".join(path))


def create(root: str, leaves: dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype, tuple[int, ...]]]):
    """Create the checkpoint at ``root`` (must not exist). leaves: path -> (shape, dtype, chunks).

    Returns path -> open tensorstore array (write with ``arr[index].write(x).result()``).
    """
    import orbax.checkpoint as ocp
    import tensorstore as ts

    skeleton = nest({p: np.zeros((1,) * len(s), dt) for p, (s, dt, _) in leaves.items()})
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)  # orbax warns that there is no OCDBT to merge (we do not use it)
    try:
        ocp.Checkpointer(ocp.StandardCheckpointHandler(use_ocdbt=False)).save(root, skeleton)
    finally:
        absl_log.setLevel(level)
    out = {}
    for p, (shape, _, chunks) in leaves.items():
        d = leaf_dir(root, p)
        with open(os.path.join(d, ".zarray")) as f:
            meta = json.load(f)
        meta.update(shape=list(shape), chunks=[max(1, c) for c in chunks], compressor=None)
        out[p] = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": d}, "metadata": meta},
                         create=True, delete_existing=True).result()
    return out


def open_leaf(root: str, path: tuple[str, ...]):
    """Open one parameter of a checkpoint written by :func:`create` (None if the layout differs)."""
    import tensorstore as ts

    d = leaf_dir(root, path)
    if not os.path.isfile(os.path.join(d, ".zarray")):
        return None
    return ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": d}}, open=True).result()
