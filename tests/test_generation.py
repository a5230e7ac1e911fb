"""Generation: cached decoding equals recomputation, saved memories, seeded sampling (HF equivalence: test_sampling_hf.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vxl_jax.infer.api import VideoXL
from vxl_jax.model import random_model
from vxl_jax.infer.sampling import SamplingParams, choose_jax, seen_mask


def test_cached_decoding_equals_recompute(vx, prompt):
    """Each decoding step's logits equal a from-scratch prefill of the prompt plus the tokens so far."""
    ids, pixels = prompt
    new, step_logits = vx.generate(ids, pixels, ratio=4, max_new_tokens=5, do_sample=False, stop_ids=[],
                                   return_logits=True)
    assert len(new) == 5
    for i in range(5):
        fresh = vx.prefill(np.concatenate([ids, new[:i]]), pixels, ratio=4).logits[-1]
        np.testing.assert_allclose(step_logits[i], fresh, atol=1e-5, rtol=0)
        assert new[i] == int(np.argmax(fresh))
    # the memory holds prefix + beacons + suffix + all but the last generated token
    assert vx.stats["kept_kv"] == 6 + 3 * 144 // 4 + 5 + 4


def test_saved_memory_answers_like_a_fresh_encode(vx, prompt, tmp_path):
    ids, pixels = prompt
    res = vx.prefill(ids, pixels, ratio=8)
    path = tmp_path / "video.mem"
    vx.save_memory(path, res.video_memory)
    mem = vx.load_memory(path)
    assert mem.sizes == {"prefix": 6, "beacons": 54, "text": 0, "total": 60}
    assert mem.frames == 3 and mem.visual_tokens == 432
    np.testing.assert_array_equal(mem.prompt_ids, ids[:6])
    question = ids[7:]
    fresh = vx.generate(ids, pixels, ratio=8, max_new_tokens=4, stop_ids=[])
    reloaded = vx.generate(question, None, memory=mem, max_new_tokens=4, stop_ids=[])
    np.testing.assert_array_equal(fresh, reloaded)
    # the repetition penalty sees the prompt before the video too: same answer as a plain run
    kw = dict(max_new_tokens=4, stop_ids=[], repetition_penalty=1.3)
    np.testing.assert_array_equal(vx.generate(ids, pixels, ratio=8, **kw), vx.generate(question, None, memory=mem, **kw))
    # a second, different question reuses the same memory without re-encoding: no window-scan call runs
    scans, windows = [], vx.engine.windows
    vx.engine.windows = lambda *a, **k: scans.append(1) or windows(*a, **k)
    try:
        other = vx.generate(np.array([9, 10, 11]), None, memory=mem, max_new_tokens=3, stop_ids=[])
    finally:
        del vx.engine.windows
    assert other.shape == (3,) and not scans
    assert vx.stats["frames"] == 3 and vx.stats["visual_tokens"] == 432  # the memory's video, reported


def test_memory_from_another_model_is_refused(vx, prompt, tmp_path, tiny_cfg):
    import dataclasses

    ids, pixels = prompt
    path = tmp_path / "m.mem"
    vx.save_memory(path, vx.prefill(ids, pixels, ratio=8).video_memory)
    other_cfg = tiny_cfg.replace(lm=dataclasses.replace(tiny_cfg.lm, num_layers=3))
    with pytest.raises(ValueError, match="geometry"):
        VideoXL(other_cfg, random_model(other_cfg)).load_memory(path)


def test_stops_at_eos(vx, prompt):
    ids, pixels = prompt
    first = vx.generate(ids, pixels, ratio=8, max_new_tokens=3, stop_ids=[])
    stopped = vx.generate(ids, pixels, ratio=8, max_new_tokens=3, stop_ids=[int(first[0])])
    np.testing.assert_array_equal(stopped, first[:1])


def test_text_only_generation(vx):
    ids = np.array([5, 9, 44, 100, 7])
    new, logits = vx.generate(ids, None, max_new_tokens=3, stop_ids=[], return_logits=True)
    np.testing.assert_allclose(logits[0], vx.prefill(ids).logits[-1], atol=1e-6)


def test_bad_prompts(vx, prompt):
    _, pixels = prompt
    with pytest.raises(ValueError, match="2 video placeholders"):
        vx.prefill(np.array([1, -200, 2, -200]), pixels)
    with pytest.raises(ValueError, match="no pixel_values"):
        vx.prefill(np.array([1, -200, 2]), None)
    with pytest.raises(ValueError, match="no -200"):
        vx.prefill(np.array([1, 2]), pixels)
    with pytest.raises(ValueError, match="pixel_values must be"):
        vx.prefill(np.array([1, -200, 2]), np.zeros((2, 3, 224, 224), np.float32))


def test_sampling_is_seeded_and_respects_top_k():
    logits = np.linspace(0, 5, 100).astype(np.float32)
    p = SamplingParams(do_sample=True, temperature=1.0, top_k=3)
    draw = jax.jit(jax.vmap(lambda k: choose_jax(jnp.asarray(logits), seen_mask(np.array([], np.int64), 100), p, k)))
    draws = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), 40))).tolist()
    assert set(draws) <= {97, 98, 99} and len(set(draws)) > 1
    again = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), 40))).tolist()
    assert draws == again


def test_video_memory_shares_the_prompt_memory_and_survives_generation(vx, prompt):
    """The video memory is the prompt memory read up to the video's end (one device buffer), and
    asking from it twice gives the same answer: nothing a caller holds is ever donated."""
    ids, pixels = prompt
    res = vx.prefill(ids, pixels, ratio=8)
    video = res.video_memory
    assert video.kv.k is res.memory.k
    assert video.sizes == {"prefix": 6, "beacons": 54, "text": 0, "total": 60}
    assert res.sizes["total"] == 60 + len(ids) - 7 and res.sizes["text"] == len(ids) - 7
    question = ids[7:]
    first = vx.generate(question, None, memory=video, max_new_tokens=4, stop_ids=[])
    again = vx.generate(question, None, memory=video, max_new_tokens=4, stop_ids=[])
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, vx.generate(ids, pixels, ratio=8, max_new_tokens=4, stop_ids=[]))
    assert np.isfinite(np.asarray(res.memory.k)).all()  # still alive


def test_memory_from_another_model_of_the_same_shape_is_refused(vx, prompt, tmp_path, tiny_cfg):
    """Same geometry, other weights: the fingerprint in the file's metadata tells them apart."""
    from vxl_jax.infer.memory_file import MemoryMismatchError

    ids, pixels = prompt
    path = tmp_path / "m.mem"
    vx.save_memory(path, vx.prefill(ids, pixels, ratio=8).video_memory)
    other = VideoXL(tiny_cfg, random_model(tiny_cfg, seed=12, std=0.2))
    with pytest.raises(MemoryMismatchError, match="made by another model .*encode the video again"):
        other.load_memory(path)
    # the same weights in bfloat16 (the folder loaded with --dtype bfloat16) are the same model: the fingerprint
    # is of the stored values (tests/test_fingerprint.py covers the rule)
    from vxl_jax.convert.folder import save_converted

    save_converted(tmp_path / "folder", vx.model)
    same_bf16 = VideoXL.load(tmp_path / "folder", dtype="bfloat16")
    assert same_bf16.fingerprint() == vx.fingerprint() != other.fingerprint()
    assert same_bf16.load_memory(path).sizes["total"] == 60
