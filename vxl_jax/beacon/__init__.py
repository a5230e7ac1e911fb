"""Visual Summary Token ("beacon") compression: window layout, the window scan, training loss."""

from vxl_jax.beacon.windows import compress_windows, interleave_layout, window_step

__all__ = ["compress_windows", "interleave_layout", "window_step"]
