"""Every way of asking reaches the video through one core function (vxl_jax/infer/core.py).

``InferenceCore.feed_windows`` is the only loop that feeds video to the window scan, and
``InferenceCore.prompt`` the only place text meets a memory before decoding: both are wrapped with
counters, and each public path (prefill, generate, batched generate, sessions, saved memories,
evaluation scoring) must go through them — and nothing else may call the engine's window scan.
"""

import numpy as np
import pytest

from vxl_jax.eval.choice import letter_logprobs, text_logprobs
from vxl_jax.infer.core import InferenceCore


@pytest.fixture
def calls(vx, monkeypatch):
    """Counts of the core's feed_windows / prompt calls and of the engine's window-scan calls."""
    seen = {"feed_windows": 0, "prompt": 0, "engine.windows": 0, "windows_in_feed": 0}
    feed, prompt, windows = InferenceCore.feed_windows, InferenceCore.prompt, vx.engine.windows
    inside = []

    def counted_feed(self, *a, **k):
        seen["feed_windows"] += 1
        inside.append(True)
        try:
            return feed(self, *a, **k)
        finally:
            inside.pop()

    def counted_prompt(self, *a, **k):
        seen["prompt"] += 1
        return prompt(self, *a, **k)

    def counted_windows(*a, **k):
        seen["engine.windows"] += 1
        seen["windows_in_feed"] += bool(inside)
        return windows(*a, **k)

    monkeypatch.setattr(InferenceCore, "feed_windows", counted_feed)
    monkeypatch.setattr(InferenceCore, "prompt", counted_prompt)
    monkeypatch.setattr(vx.engine, "windows", counted_windows)
    return seen


def _reached_through_core(calls, feeds: int, prompts: int):
    assert calls["feed_windows"] == feeds and calls["prompt"] == prompts, calls
    assert calls["engine.windows"] == calls["windows_in_feed"], "the window scan was called outside feed_windows"


def test_prefill_and_generate(vx, prompt, calls):
    ids, pixels = prompt
    vx.prefill(ids, pixels, ratio=4)
    _reached_through_core(calls, feeds=1, prompts=1)
    vx.generate(ids, pixels, ratio=4, max_new_tokens=2)
    _reached_through_core(calls, feeds=2, prompts=2)


def test_batched_generate_and_saved_memories(vx, prompt, calls, tmp_path):
    ids, pixels = prompt
    vx.generate([ids, ids[:3]], [pixels, None], ratio=4, max_new_tokens=2)
    _reached_through_core(calls, feeds=1, prompts=1)  # one window scan for the batch
    res = vx.prefill(ids, pixels, ratio=4)
    vx.save_memory(tmp_path / "m.mem", res.video_memory)
    mem = vx.load_memory(tmp_path / "m.mem")
    vx.generate([ids[-3:], ids[-2:]], None, memory=mem, max_new_tokens=2)
    _reached_through_core(calls, feeds=2, prompts=3)  # the saved memory is not encoded again


def test_sessions(vx, calls):
    frames = np.random.default_rng(0).integers(0, 256, (vx.cfg.beacon.frames_per_window + 2, 40, 52, 3), np.uint8)
    s = vx.session(np.array([5, 6, 7]), ratio=4)
    s.add_frames(frames[:3]).add_frames(frames[3:])  # completes one window
    assert calls["feed_windows"] == 1
    s.prefill(np.array([8, 9]))  # the pending frames as a clipped window, then the text
    s.generate(np.array([8, 9]), max_new_tokens=2)
    _reached_through_core(calls, feeds=3, prompts=2)


def test_evaluation_scoring(vx, prompt, calls):
    ids, pixels = prompt
    memory = vx.prefill(ids, pixels, ratio=4).video_memory

    class Letters:  # a tokenizer whose option letters are single tokens
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [10 + ord(c) - ord("A") for c in text]}

    vx_tok, vx.tokenizer = vx.tokenizer, Letters()
    try:
        letter_logprobs(vx, memory, ids[-3:], 3)
        assert calls["prompt"] == 2
        text_logprobs(vx, memory, ids[-3:], ["AB", "C", "BCA"])
        assert calls["prompt"] == 3  # every option of the question in one batched call
    finally:
        vx.tokenizer = vx_tok
    _reached_through_core(calls, feeds=1, prompts=3)


def test_scoring_matches_generation_logits(vx, prompt):
    """``vx.score`` over a saved memory: the logits of every position, equal to the prefill's."""
    ids, pixels = prompt
    res = vx.prefill(ids, pixels, ratio=4)
    suffix = ids[list(ids).index(-200) + 1:]
    np.testing.assert_allclose(vx.score(suffix, memory=res.video_memory), res.logits, atol=1e-5, rtol=0)
    both = vx.score([suffix, suffix[:2]], memory=res.video_memory)
    np.testing.assert_allclose(both[0], res.logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(both[1], res.logits[:2], atol=1e-5, rtol=0)
