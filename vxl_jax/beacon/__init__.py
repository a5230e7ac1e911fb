"""Visual Summary Token ("beacon") compression: window layout and the window scan (``windows``), its lean
backward (``lean``), the text step over the memory (``text``), per-window ratios (``ratios``) and the
training objective (``train``: the loss of one batch; the training run is :mod:`vxl_jax.train`)."""

from vxl_jax.beacon.windows import compress_windows, interleave_layout, window_step

__all__ = ["compress_windows", "interleave_layout", "window_step"]
