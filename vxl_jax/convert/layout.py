"""File names of the converted model folder (see :mod:`vxl_jax.convert.folder`)."""

CONFIG_NAME = "vxl_config.json"  # our VideoXLConfig
PARAMS_DIR = "params"  # the Orbax parameter checkpoint
FINGERPRINT_NAME = "fingerprint.json"  # the whole-model fingerprint (vxl_jax.convert.fingerprint)
