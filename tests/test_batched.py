"""Batched answering (vxl_jax/infer/batched.py): B prompts in one batched call equal B single calls (greedy ids
identical, step logits <= 1e-5): different videos of different lengths (and a text-only prompt), many
questions over one video memory, saved memories, rows stopping at different steps, sampling seeds."""

import numpy as np
import pytest

KW = dict(max_new_tokens=6, stop_ids=[], do_sample=False, return_logits=True)


@pytest.fixture(scope="module")
def items():
    rng = np.random.default_rng(5)
    ids = [np.concatenate([rng.integers(3, 500, p), [-200], rng.integers(3, 500, s)]) for p, s in ((6, 5), (3, 9), (8, 2))]
    ids.append(rng.integers(3, 500, 7))  # text only
    videos = [rng.integers(0, 256, (f, 40, 52, 3), dtype=np.uint8) for f in (3, 13, 21)] + [None]
    questions = [rng.integers(3, 500, n) for n in (4, 8, 2)]
    return ids, videos, questions


def _assert_rows_equal_single_calls(batched, singles):
    out, logits = batched
    assert len(out) == len(singles)
    for (o, lg), got, got_lg in zip(singles, out, logits):
        np.testing.assert_array_equal(got, o)
        np.testing.assert_allclose(got_lg, lg, atol=1e-5, rtol=0)


def test_videos_of_different_lengths(vx, items):
    ids, videos, _ = items
    batched = vx.generate(ids, videos, ratio=4, **KW)
    assert vx.stats["batch"] == 4
    _assert_rows_equal_single_calls(batched, [vx.generate(i, v, ratio=4, **KW) for i, v in zip(ids, videos)])


def test_questions_over_one_memory(vx, items):
    ids, videos, questions = items
    vm = vx.prefill(ids[1], videos[1], ratio=8).video_memory
    batched = vx.generate(questions, None, memory=vm, **KW)
    _assert_rows_equal_single_calls(batched, [vx.generate(q, None, memory=vm, **KW) for q in questions])
    # the same video given for every row (same prefix): encoded once, answered like the memory
    prefix = ids[1][:np.flatnonzero(ids[1] == -200)[0] + 1]
    full = [np.concatenate([prefix, q]) for q in questions]
    again = vx.generate(full, [videos[1]] * 3, ratio=8, **KW)
    _assert_rows_equal_single_calls(again, list(zip(*batched)))


def test_list_of_saved_memories(vx, items, tmp_path):
    ids, videos, questions = items
    mems = []
    for i in range(3):
        path = tmp_path / f"{i}.mem"
        vx.save_memory(path, vx.prefill(ids[i], videos[i], ratio=8).video_memory)
        mems.append(vx.load_memory(path))
    batched = vx.generate(questions, None, memory=mems, **KW)
    _assert_rows_equal_single_calls(batched, [vx.generate(q, None, memory=m, **KW) for q, m in zip(questions, mems)])


def test_rows_stop_on_their_own(vx, items):
    ids, videos, _ = items
    free = [vx.generate(i, v, ratio=4, max_new_tokens=8, stop_ids=[], do_sample=False) for i, v in zip(ids, videos)]
    stop = int(free[0][2])  # row 0 stops at its 3rd token; other rows where (if) they produce it
    out = vx.generate(ids, videos, ratio=4, max_new_tokens=8, stop_ids=[stop], do_sample=False, chunk=4)
    for o, f in zip(out, free):
        hits = np.flatnonzero(f == stop)
        np.testing.assert_array_equal(o, f[:hits[0] + 1] if len(hits) else f)
    assert len(out[0]) == 3


def test_sampling_seeds_per_row(vx, items):
    ids, videos, questions = items
    vm = vx.prefill(ids[0], videos[0], ratio=8).video_memory
    kw = dict(max_new_tokens=6, stop_ids=[], do_sample=True, temperature=1.5, top_k=50)
    out = vx.generate(questions, None, memory=vm, seed=[1, 2, 3], **kw)
    for q, o, s in zip(questions, out, (1, 2, 3)):
        np.testing.assert_array_equal(o, vx.generate(q, None, memory=vm, seed=s, **kw))


def test_bad_batches(vx, items):
    ids, videos, questions = items
    with pytest.raises(ValueError, match="pixel_values"):
        vx.generate(ids[:2], [videos[0]], ratio=4, max_new_tokens=2)
    with pytest.raises(ValueError, match="one int ratio"):
        vx.generate(ids[:2], videos[:2], ratio=[2, 8], max_new_tokens=2)
    with pytest.raises(ValueError, match="no -200"):
        vx.generate([ids[3]], [videos[0]], max_new_tokens=2)
    with pytest.raises(ValueError, match="memories"):
        vx.generate(questions, None, memory=[vx.prefill(ids[0], videos[0]).video_memory], max_new_tokens=2)
