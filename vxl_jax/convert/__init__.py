"""PyTorch (released Video-XL layout) <-> JAX weight conversion."""

from vxl_jax.convert.convert import convert, export_torch
from vxl_jax.convert.errors import ConversionError

__all__ = ["ConversionError", "convert", "export_torch"]
