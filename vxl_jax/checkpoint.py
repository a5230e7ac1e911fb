"""Compatibility path: the converted model folder lives in :mod:`vxl_jax.convert.folder`.

(Train-state checkpoints of a training run are :mod:`vxl_jax.train.checkpointing`.)
"""

from vxl_jax.convert.folder import (CONFIG_NAME, PARAMS_DIR, check_converted_folder, load_converted, read_params,
                                    save_converted)

__all__ = ["CONFIG_NAME", "PARAMS_DIR", "check_converted_folder", "load_converted", "read_params", "save_converted"]
