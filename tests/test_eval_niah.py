"""Needle in a video haystack: the needle lands on the requested frame indices; the grid table and heatmap.
(The command line end to end is in test_eval_run.py, which has the micro model.)"""

import json

import numpy as np
import pytest

from vxl_jax.eval.heatmap import draw_heatmap, grid_table, niah_grid
from vxl_jax.eval.niah import (COLOUR_OPTIONS, Needle, colour_needles, insert_needle, load_needles, make_niah,
                               needle_start)
from vxl_jax.eval.readers import read_niah
from vxl_jax.media.video import load_video


def _colour_of(frame):
    """Name of the needle colour a decoded frame shows, or None for a grey haystack frame."""
    from vxl_jax.data.synthetic import COLOURS

    mean = frame.reshape(-1, 3).mean(0)
    if mean.max() - mean.min() < 25:
        return None
    return min(COLOURS, key=lambda c: np.abs(mean - np.asarray(COLOURS[c])).sum())


def test_needle_start_spans_the_whole_video():
    assert [needle_start(10, d, 1) for d in (0, 25, 50, 75, 100)] == [0, 2, 4, 7, 9]  # round(d% of 9)
    assert [needle_start(20, d, 3) for d in (0, 50, 100)] == [0, 8, 17]  # last needle frame = last frame
    with pytest.raises(ValueError, match="percentage"):
        needle_start(10, 120, 1)
    with pytest.raises(ValueError, match="does not fit"):
        needle_start(3, 50, 3)
    hay = np.zeros((7, 4, 6, 3), np.uint8)
    frames, where = insert_needle(hay, np.full((3, 8, 8, 3), 9, np.uint8), 50)
    assert frames.shape == (10, 4, 6, 3) and where == [4, 5, 6]
    assert (frames[4:7] == 9).all() and (np.delete(frames, where, 0) == 0).all()


def test_generated_videos_have_the_needle_at_the_requested_frames(tmp_path):
    path = make_niah(tmp_path, lengths=[6, 13], depths=[0, 50, 100], needles=colour_needles()[1:3], seed=1)
    items = read_niah(path)
    assert len(items) == 2 * 3 * 2
    raw = json.load(open(path))["items"]
    for it, row in zip(items, raw):
        frames, info = load_video(tmp_path / "videos" / it.video, it.num_frames)
        assert info["total_frames"] == it.num_frames == row["length"] == len(frames)
        start = needle_start(row["length"], row["depth"], 1)
        assert row["needle_frames"] == [start]
        seen = [_colour_of(f) for f in frames]
        assert seen[start] == row["needle"], (it.id, seen)
        assert [c for i, c in enumerate(seen) if i != start] == [None] * (len(frames) - 1)
        assert it.options == COLOUR_OPTIONS and it.options[ord(it.answer) - 65] == row["needle"]


def test_image_needle_in_a_real_haystack_video(tmp_path):
    from PIL import Image

    from vxl_jax.media.video import read_counter, write_sample_video

    hay = write_sample_video(tmp_path / "hay.mp4", num_frames=60, size=(96, 64), codec="libx264")
    Image.fromarray(np.full((30, 40, 3), (30, 200, 40), np.uint8)).save(tmp_path / "needle.png")
    (tmp_path / "needles.json").write_text(json.dumps([{"image": "needle.png", "question": "What colour flashed?",
                                                        "options": ["red", "green"], "answer": "green"}]))
    needles = load_needles(tmp_path / "needles.json")
    assert needles[0].answer == "B" and needles[0].frames.shape == (1, 30, 40, 3)
    path = make_niah(tmp_path / "t", lengths=[11], depths=[30], haystacks=[str(hay)], needles=needles)
    (row,) = json.load(open(path))["items"]
    frames, _ = load_video(tmp_path / "t" / "videos" / row["video"], 11)
    assert row["needle_frames"] == [3] and _colour_of(frames[3]) == "green"
    # the other frames are the haystack's, sampled uniformly and in order (its frame counter reads back)
    counters = [read_counter(f) for i, f in enumerate(frames) if i != 3]
    assert counters == np.linspace(0, 59, 10, dtype=int).tolist()


def test_grid_table_and_heatmap(tmp_path):
    recs = [{"groups": {"length": L, "depth": d}, "correct": ok}
            for L, d, ok in [(10, 0, True), (10, 0, False), (10, 100, True), (40, 0, False), (40, 100, True)]]
    lengths, depths, acc, counts = niah_grid(recs)
    assert lengths == [10, 40] and depths == [0.0, 100.0]
    np.testing.assert_array_equal(acc, [[0.5, 0.0], [1.0, 1.0]])
    np.testing.assert_array_equal(counts, [[2, 1], [1, 1]])
    table = grid_table(lengths, depths, acc, counts)
    assert "| 0% | 50% | 0% | 25% |" in table and "| 100% | 100% | 100% | 100% |" in table
    pytest.importorskip("matplotlib")
    png = draw_heatmap(tmp_path / "h.png", lengths, depths, acc)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_needle_class_is_plain_data():
    n = Needle("x", np.zeros((2, 4, 4, 3), np.uint8), "Q?", ["a", "b"], "A")
    assert n.frames.shape[0] == 2
