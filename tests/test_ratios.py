"""Per-window ratios (vxl_jax.beacon.ratios): the original's step-random sequence, its divisibility filter, and
the training draw as a pure function of (key, step, micro-batch)."""

import jax
import numpy as np
import pytest

from vxl_jax.beacon.ratios import check_ratio, draw_ratio_idx, ratio_schedule
from vxl_jax.config import BeaconConfig, ConfigError

BEACON = BeaconConfig()  # 1440-token windows, 144 tokens per frame


def test_step_random_is_the_originals_generator_sequence_across_calls():
    rng, ref = np.random.default_rng(42), np.random.default_rng(42)
    picks = []
    for num_visual in (3 * 1440, 2 * 1440 + 720):  # two calls: the generator continues
        ratios, idx = ratio_schedule(BEACON, [2, 4, 8], num_visual, rng)
        picks += [ratios[i] for i in idx]
    assert picks == [int(ref.choice([2, 4, 8])) for _ in range(6)]


def test_step_random_filters_ratios_that_do_not_divide_the_last_window():
    ratios, idx = ratio_schedule(BEACON, [16, 32], 1440 + 1008, np.random.default_rng(0))
    last = ratios[idx[-1]]
    assert last == 16  # 1008 = 7 frames is not a multiple of 32


def test_fixed_ratio_and_errors():
    assert ratio_schedule(BEACON, None, 3000)[0] == (8,)
    assert list(ratio_schedule(BEACON, 4, 3000)[1]) == [0, 0, 0]
    assert check_ratio(BEACON, [2, 8]) == (2, 8)
    with pytest.raises(ConfigError, match="does not divide"):
        check_ratio(BEACON, 7)
    with pytest.raises(ConfigError, match="empty"):
        check_ratio(BEACON, [])
    with pytest.raises(ValueError, match="Generator"):
        ratio_schedule(BEACON, [2, 8], 3000)


def test_training_draw_is_a_function_of_key_step_and_micro_batch():
    key = jax.random.PRNGKey(3)
    a = np.asarray(draw_ratio_idx(key, 5, 1, 7, 5))
    assert a.shape == (7,) and a.min() >= 0 and a.max() < 5
    np.testing.assert_array_equal(a, np.asarray(draw_ratio_idx(key, 5, 1, 7, 5)))
    assert not np.array_equal(a, np.asarray(draw_ratio_idx(key, 6, 1, 7, 5)))
