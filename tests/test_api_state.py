"""The API object's visible state: the step-random ratio generator and the per-call reports (issue 11)."""

import numpy as np
import pytest

RATIOS = [2, 4, 8]


def _features(vx, windows: int = 3):
    """Visual tokens for ``windows`` full windows plus half a window (every ratio divides both lengths)."""
    w = vx.cfg.beacon.window
    return np.random.default_rng(7).normal(size=(windows * w + w // 2, vx.cfg.lm.hidden_size)).astype(np.float32)


def _ids():
    return np.array([5, 6, 7, -200, 8, 9], np.int64)


def _draws(rng, n):
    return tuple(int(rng.choice(RATIOS)) for _ in range(n))


def test_step_random_generator_continues_across_calls_and_can_be_reset_or_passed(vx):
    feats = _features(vx)
    vx.reset_ratio_rng()
    first = vx.prefill(_ids(), None, ratio=RATIOS, features=feats).ratios
    second = vx.prefill(_ids(), None, ratio=RATIOS, features=feats).ratios
    expected = np.random.default_rng(42)  # the original's generator, never reset between calls
    assert first == _draws(expected, 4) and second == _draws(expected, 4)
    assert first != second  # it continued rather than restarting

    before = vx.ratio_rng.bit_generator.state
    own = vx.prefill(_ids(), None, ratio=RATIOS, features=feats, ratio_rng=np.random.default_rng(42)).ratios
    assert own == first
    assert vx.ratio_rng.bit_generator.state == before  # the model's generator was not touched

    vx.reset_ratio_rng()
    assert vx.prefill(_ids(), None, ratio=RATIOS, features=feats).ratios == first
    vx.reset_ratio_rng(seed=3)
    assert vx.prefill(_ids(), None, ratio=RATIOS, features=feats).ratios == _draws(np.random.default_rng(3), 4)


def test_reports_are_built_per_call_read_only_and_returned(vx):
    feats = _features(vx, windows=1)
    res = vx.prefill(_ids(), None, ratio=4, features=feats)
    assert res.stats["kept_kv"] == res.sizes["total"] and res.stats["visual_tokens"] == len(feats)
    assert dict(vx.stats) == dict(res.stats)
    with pytest.raises(TypeError):
        vx.stats["kept_kv"] = 0  # a report is never patched
    prefill_report = dict(res.stats)

    out = vx.generate(_ids(), None, ratio=4, features=feats, max_new_tokens=3, stop_ids=[], return_output=True)
    assert len(out.ids) == out.decode["generated"] == 3
    assert out.decode["kept_kv"] == int(np.asarray(out.memory.length)[0]) == out.prompt["kept_kv"] + 2
    assert dict(vx.stats) == {**out.prompt, **out.decode}
    assert dict(res.stats) == prefill_report  # the earlier call's report did not change
    assert not hasattr(vx, "last_memory")

    ids = vx.generate(_ids(), None, ratio=4, features=feats, max_new_tokens=3, stop_ids=[])
    np.testing.assert_array_equal(ids, out.ids)  # the plain return is unchanged
