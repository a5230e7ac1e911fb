"""Per-window compression ratios: the inference schedule and the training draw (docs/algorithm.md §3, §8).

Both return ``(ratios, ratio_idx)`` in the form the window scan takes: a tuple of distinct ratios
(one ``lax.switch`` branch each) and an int32 index per window.

- :func:`ratio_schedule` (inference, host): a fixed int for every window, or the original's
  "step-random" mode: for each window a numpy ``Generator.choice`` among the candidates that divide
  that window's length. The generator is the caller's state (``default_rng(42)`` reproduces the
  original, which never resets it).
- :func:`draw_ratio_idx` (training, device): a pure function of ``(key, step, micro-batch)``, so a
  resumed run draws exactly the same ratios.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vxl_jax.config import BeaconConfig, ConfigError

DEFAULT_RATIO = 8
ORIGINAL_RATIO_SEED = 42  # the original creates numpy default_rng(42) once per loaded model


def parse_ratio(text) -> int | list[int] | None:
    """A ``--ratio`` flag: '8' -> 8, '2,8' -> [2, 8] (step-random), None -> None; ints and lists pass through.
    Only the syntax is checked here (ValueError); positivity and divisibility by the model's window are
    :func:`check_ratio`'s."""
    if text is None or isinstance(text, (int, list)):
        return text
    try:
        values = [int(p) for p in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--ratio must be an integer or a comma-separated list of integers (e.g. 8 or 2,8), "
                         f"got {text!r}") from None
    return values[0] if len(values) == 1 else values


def check_ratio(beacon: BeaconConfig, ratio: int | Sequence[int] | None) -> int | tuple[int, ...]:
    """``ratio`` checked against the window -> an int (fixed) or a non-empty tuple (step-random). None -> 8."""
    ratio = DEFAULT_RATIO if ratio is None else ratio
    if isinstance(ratio, (int, np.integer)):
        beacon.check_ratio(int(ratio))
        return int(ratio)
    ratio = tuple(int(r) for r in ratio)
    if not ratio:
        raise ConfigError("ratio list is empty")
    for r in ratio:
        beacon.check_ratio(r)
    return ratio


def pick_ratio(candidates: Sequence[int], stride: int, window_index: int, rng: np.random.Generator) -> int:
    """Step-random: the ratio of one window of ``stride`` visual tokens, ``rng.choice`` among the candidates
    that divide it (the original's filter); ``rng`` advances by one draw."""
    valid = [r for r in candidates if stride >= r and stride % r == 0]
    if not valid:
        raise ConfigError(f"no ratio in {list(candidates)} divides the {stride}-token window {window_index}")
    return int(rng.choice(valid))


def ratio_schedule(beacon: BeaconConfig, ratio: int | Sequence[int] | None, num_visual: int,
                   rng: np.random.Generator | None = None) -> tuple[tuple[int, ...], np.ndarray]:
    """-> (distinct ratios, ratio_idx [W] int32) for ``num_visual`` visual tokens.

    ``ratio``: an int (every window; default 8) or a list (step-random: needs ``rng``, which advances).
    """
    n_windows = beacon.num_windows(num_visual)
    ratio = check_ratio(beacon, ratio)
    if isinstance(ratio, int):
        return (ratio,), np.zeros(n_windows, np.int32)
    if rng is None:
        raise ValueError("a list of ratios (step-random mode) needs a numpy Generator")
    picks = [pick_ratio(ratio, min(beacon.window, num_visual - w * beacon.window), w, rng) for w in range(n_windows)]
    distinct = tuple(sorted(set(picks)))
    return distinct, np.array([distinct.index(r) for r in picks], np.int32)


def draw_ratio_idx(key, step, micro, num_windows: int, num_ratios: int):
    """[W] int32 uniform in [0, num_ratios): a pure function of (key, step, micro)."""
    k = jax.random.fold_in(jax.random.fold_in(key, step), micro)
    return jax.random.randint(k, (num_windows,), 0, num_ratios, dtype=jnp.int32)
