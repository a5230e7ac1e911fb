"""Command-line entry points (``infer.py``, ``train.py``, ``convert_weights.py`` call these)."""
