"""VNBench, MVBench and NExT-QA readers on small files written in each release's layout; clip and frame-folder
reading; the papers' scores (VNBench's circular rule, MVBench's task mean, NExT-QA's C / T / D)."""

import json

import numpy as np
import pytest

from vxl_jax.eval.clips import clip_range, read_item_frames
from vxl_jax.eval.benchmarks import read_benchmark
from vxl_jax.eval.readers import find_video
from vxl_jax.eval.run import group_by_video
from vxl_jax.eval.scores import paper_scores


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded by the readers")
    return path


def _vnbench_rows():
    rows = []
    for video, kind, gt in [("3261112327_ret_insert1", "ret_insert1", "blue"),
                            ("3261112327_cnt_edit1", "cnt_edit1", "3")]:
        opts = ["blue", "red", "green", "yellow"] if kind.startswith("ret") else ["1", "2", "3", "4"]
        for t in range(4):
            rot = opts[t:] + opts[:t]  # the release rotates the options between tries
            rows.append({"video": f"./VNBench_new/{video}.mp4", "question": "What colour is the needle?",
                         "options": rot, "gt": gt, "gt_option": "ABCD"[rot.index(gt)], "type": kind, "try": t,
                         "needle_time": [12.0], "length": 60})
    return rows


def test_vnbench_4try_json(tmp_path):
    f = tmp_path / "VNBench-main-4try.json"
    f.write_text(json.dumps(_vnbench_rows()))
    items = read_benchmark("vnbench", f)
    assert [it.id for it in items[:5]] == ["3261112327_ret_insert1_0", "3261112327_ret_insert1_1",
                                           "3261112327_ret_insert1_2", "3261112327_ret_insert1_3",
                                           "3261112327_cnt_edit1_0"]  # Video-XL's eval_vnbench question ids
    assert [it.answer for it in items[:4]] == ["A", "D", "C", "B"]
    assert items[0].groups == {"type": "ret_insert1", "task": "retrieval"}
    assert items[4].groups["task"] == "counting" and items[4].meta["sample"] == "3261112327_cnt_edit1"
    want = _touch(tmp_path / "VNBench_new" / "3261112327_ret_insert1.mp4")
    assert find_video(tmp_path, items[0]) == str(want)
    rows = _vnbench_rows()
    rows[0]["gt"] = 2  # an index, as the release's eval.py accepts
    f.write_text(json.dumps(rows))
    assert read_benchmark("vnbench", f)[0].answer == "C"
    rows[0]["gt"] = "purple"
    f.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="not one of the options"):
        read_benchmark("vnbench", f)


def test_vnbench_circular_score():
    """A video counts only when all four tries are right; the score is the mean over types (eval.py)."""
    recs = []
    for sample, kind, right in [("a", "ret_insert1", [1, 1, 1, 1]), ("b", "ret_insert1", [1, 1, 0, 1]),
                                ("c", "cnt_edit1", [1, 1, 1, 1])]:
        for t, ok in enumerate(right):
            recs.append({"id": f"{sample}_{t}", "correct": bool(ok), "meta": {"sample": sample},
                         "groups": {"type": kind, "task": "retrieval" if kind[0] == "r" else "counting"}})
    s = paper_scores("vnbench", recs)
    assert s["groups"]["ret_insert1"] == {"accuracy": 0.5, "total": 2}
    assert s["groups"]["retrieval"]["accuracy"] == 0.5 and s["groups"]["counting"]["accuracy"] == 1.0
    assert list(s["groups"])[:2] == ["retrieval", "counting"]
    assert s["score"] == pytest.approx(0.75)  # per-question accuracy would be 11 / 12


def _mvbench(root):
    (root / "json").mkdir(parents=True)
    (root / "json" / "action_sequence.json").write_text(json.dumps([
        {"video": "ZS9XR.mp4", "question": "What happened after the person took the food?",
         "candidates": ["Ate the medicine.", "Tidied up the blanket.", "Put down the cup/glass/bottle."],
         "answer": "Ate the medicine.", "start": 1.0, "end": 3.0},
        {"video": "ZS9XR.mp4", "question": "What did the person do first?",
         "candidates": ["Sat down.", "Stood up."], "answer": "Stood up.", "start": 0.0, "end": 1.0}]))
    (root / "json" / "moving_count.json").write_text(json.dumps([
        {"video": "video_10003.mp4", "question": "How many metal objects enter the scene?",
         "candidates": ["2", "0", "1"], "answer": "1"}]))
    (root / "json" / "episodic_reasoning.json").write_text(json.dumps([
        {"video": "castle_s07e04_seg02_clip_14", "question": "Why does Castle smile?",
         "candidates": ["a", "b", "c", "d", "e"], "answer": "e", "start": 1.0, "end": 2.0}]))


def test_mvbench_json_folder_and_video_folders(tmp_path):
    _mvbench(tmp_path / "MVBench")
    items = read_benchmark("mvbench", tmp_path / "MVBench" / "json")
    assert [it.id for it in items] == ["action_sequence/0", "action_sequence/1", "episodic_reasoning/0",
                                       "moving_count/0"]
    assert [it.answer for it in items] == ["A", "B", "E", "C"]
    assert items[0].clip == (1.0, 3.0) and items[3].clip is None and items[2].frame_fps == 3.0
    assert {it.groups["task"] for it in items} == {"action_sequence", "episodic_reasoning", "moving_count"}
    assert len(group_by_video(items[:2])) == 2  # one video, two clips: encoded separately
    root = tmp_path / "MVBench"
    want = _touch(root / "video" / "clevrer" / "video_validation" / "video_10003.mp4")
    assert find_video(root, items[3]) == str(want)  # the videos folder may be the dataset root or its video/
    assert find_video(root / "video", items[3]) == str(want)
    frames = root / "video" / "tvqa" / "frames_fps3_hq" / "castle_s07e04_seg02_clip_14"
    frames.mkdir(parents=True)
    with pytest.raises(FileNotFoundError):
        find_video(tmp_path / "elsewhere", items[2])
    assert find_video(root, items[2]) == str(frames)  # a frame folder
    assert read_benchmark("mvbench", tmp_path / "MVBench")[0].id == "action_sequence/0"  # the dataset root
    (root / "json" / "bogus.json").write_text("[]")
    with pytest.raises(ValueError, match="not an MVBench task"):
        read_benchmark("mvbench", root / "json")


def test_clip_and_frame_folder_reading(tmp_path):
    """A clip is read from its seconds (frame counter of the source), a pre-cut copy whole, a frame folder by name."""
    from PIL import Image

    from vxl_jax.media.video import read_counter, write_sample_video

    assert clip_range(100, 10.0, (2.0, 4.0)) == (20, 41) and clip_range(100, 10.0, None) == (0, 100)
    assert clip_range(30, 10.0, (2.5, 9.0)) == (25, 30)  # clamped to the video
    _mvbench(tmp_path / "MVBench")
    items = read_benchmark("mvbench", tmp_path / "MVBench" / "json")
    full = tmp_path / "MVBench" / "video" / "star" / "Charades_v1_480" / "ZS9XR.mp4"
    full.parent.mkdir(parents=True)
    write_sample_video(full, num_frames=48, size=(64, 64), fps=12)  # square: frames kept whole
    got = read_item_frames(str(full), items[0], 64, 5, None, 128)  # 1 s .. 3 s = source frames 12 .. 36
    assert got.shape == (5, 64, 64, 3)
    assert [read_counter(f) for f in got] == np.linspace(12, 36, 5, dtype=int).tolist()
    cut = tmp_path / "MVBench" / "video" / "star" / "Charades_segment" / "ZS9XR.mp4"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(full.read_bytes())
    assert read_item_frames(str(cut), items[0], 64, 5, None, 128) is None  # lmms-eval's cut copy: read whole
    folder = tmp_path / "MVBench" / "video" / "tvqa" / "frames_fps3_hq" / "castle_s07e04_seg02_clip_14"
    folder.mkdir(parents=True)
    for i in range(12):  # 4 s at 3 fps, frame k has grey level 10 k
        Image.fromarray(np.full((40, 60, 3), 10 * i, np.uint8)).save(folder / f"{i + 1:05d}.jpg")
    got = read_item_frames(str(folder), items[2], 32, 4, None, 128)  # 1 s .. 2 s = frames 3 .. 6
    assert got.shape == (4, 32, 32, 3)
    assert [int(round(f.mean() / 10)) for f in got] == [3, 4, 5, 6]


NEXTQA_CSV = """video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4
4010069381,369,640,480,how do the two man play the instrument,0,6,CH,roll the handle,tap feet,strum,hit,pat
4010069381,369,640,480,why did the boy clap his hands,2,3,CW,to dance,bored,happy,cold,hurt
5333075105,1282,640,360,what did the lady do after the dog ran,4,1,TP,fell,sit,laugh,cry,chase the dog
5333075105,1282,640,360,where are they,1,0,DL,park,beach,room,car,shop
"""


def test_nextqa_csv_with_video_map(tmp_path):
    ann = tmp_path / "nextqa"
    ann.mkdir()
    (ann / "val.csv").write_text(NEXTQA_CSV)
    (ann / "map_vid_vidorID.json").write_text(json.dumps({"4010069381": "1106/4010069381",
                                                          "5333075105": "0000/5333075105"}))
    items = read_benchmark("nextqa", ann / "val.csv")
    assert [it.id for it in items] == ["4010069381_6", "4010069381_3", "5333075105_1", "5333075105_0"]
    assert [it.answer for it in items] == ["A", "C", "E", "B"]
    assert items[0].options[2] == "strum" and len(items[0].options) == 5
    assert [it.groups["type"] for it in items] == ["CH", "CW", "TN", "DL"]  # TP counts as TN
    assert [it.groups["category"] for it in items] == ["causal", "causal", "temporal", "descriptive"]
    want = _touch(tmp_path / "NExTVideo" / "1106" / "4010069381.mp4")
    assert find_video(tmp_path, items[0]) == str(want)
    recs = [{"id": it.id, "correct": ok, "groups": it.groups} for it, ok in zip(items, [True, False, True, True])]
    s = paper_scores("nextqa", recs)
    assert s["score"] == 0.75 and list(s["groups"]) == ["causal", "temporal", "descriptive"]
    assert s["groups"]["causal"] == {"accuracy": 0.5, "total": 2}


def test_nextqa_lmms_eval_table(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(NEXTQA_CSV)))
    for r in rows:
        r["video"], r["answer"], r["qid"] = int(r["video"]), int(r["answer"]), int(r["qid"])
    f = tmp_path / "MC" / "test-00000-of-00001.parquet"
    f.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), f)
    items = read_benchmark("nextqa", f)
    assert [it.answer for it in items] == ["A", "C", "E", "B"]
    want = _touch(tmp_path / "NExTVideo" / "5333075105.mp4")  # lmms-eval's flat video folder
    assert find_video(tmp_path, items[2]) == str(want)
    rows[0]["answer"] = 7
    pq.write_table(pa.Table.from_pylist(rows), f)
    with pytest.raises(ValueError, match="not an index of the 5 options"):
        read_benchmark("nextqa", f)


def test_mvbench_score_is_the_task_mean():
    recs = [{"id": str(i), "correct": ok, "groups": {"task": t}}
            for i, (t, ok) in enumerate([("a", True), ("a", True), ("a", False), ("a", False), ("b", True)])]
    assert paper_scores("mvbench", recs)["score"] == pytest.approx(0.75)  # not 3 / 5
