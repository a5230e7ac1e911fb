"""Benchmark readers on small files written in each benchmark's released layout."""

import json

import pytest

from vxl_jax.eval.benchmarks import read_benchmark
from vxl_jax.eval.readers import find_video, read_longvideobench, read_mlvu, read_niah, read_videomme


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded by the readers")
    return path


def test_mlvu_dev_folder_of_task_files(tmp_path):
    ann = tmp_path / "MLVU" / "json"
    ann.mkdir(parents=True)
    (ann / "1_plotQA.json").write_text(json.dumps([
        {"video": "movie101_66.mp4", "duration": 246.0, "question": "What color is the bulldog?",
         "candidates": ["Yellow", "Black", "Gray", "White"], "answer": "Gray", "question_type": "plotQA"},
        {"video": "movie101_67.mp4", "duration": 120.5, "question": "Who opens the door?",
         "candidates": ["A man", "A dog"], "answer": "A man", "question_type": "plotQA"}]))
    (ann / "4_count.json").write_text(json.dumps([
        {"video": "count_1.mp4", "duration": 400, "question": "How many times does he jump?",
         "candidates": ["1", "2", "3", "4"], "answer": "3"}]))  # no question_type: from the file name
    items = read_mlvu(ann)
    assert [it.id for it in items] == ["1_plotQA/0", "1_plotQA/1", "4_count/0"]
    assert [it.answer for it in items] == ["C", "A", "C"]
    assert items[0].options == ["Yellow", "Black", "Gray", "White"]
    assert [it.groups["task"] for it in items] == ["plotQA", "plotQA", "count"]
    assert items[0].meta["duration"] == 246.0
    # the release keeps videos in MLVU/video/<task file stem>/
    root = tmp_path / "MLVU"
    want = _touch(root / "video" / "1_plotQA" / "movie101_66.mp4")
    assert find_video(root, items[0]) == str(want)
    assert read_mlvu(ann / "4_count.json")[0].id == "4_count/0"  # a single task file


def test_mlvu_answer_must_be_a_candidate(tmp_path):
    f = tmp_path / "2_needle.json"
    f.write_text(json.dumps([{"video": "n.mp4", "question": "Q?", "candidates": ["a", "b"], "answer": "c"}]))
    with pytest.raises(ValueError, match="not one of the candidates"):
        read_mlvu(f)


VIDEOMME_ROWS = [
    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
     "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
     "task_type": "Counting Problem", "question": "When demonstrating the Germany modern Christmas tree is "
     "initially decorated with apples, candles and berries, which kind of the decoration has the largest number?",
     "options": ["A. Apples.", "B. Candles.", "C. Berries.", "D. The three kinds are of the same number."],
     "answer": "C"},
    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
     "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-2",
     "task_type": "Information Synopsis", "question": "What is the genre of this video?",
     "options": ["A. It is a news report.", "B. It is a documentary.", "C. It is a music video.",
                 "D. It is a cooking show."], "answer": "B"},
]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_videomme_rows(tmp_path, fmt):
    f = tmp_path / f"videomme.{fmt}"
    f.write_text(json.dumps(VIDEOMME_ROWS) if fmt == "json" else "\n".join(json.dumps(r) for r in VIDEOMME_ROWS))
    items = read_videomme(f)
    assert [it.id for it in items] == ["001-1", "001-2"]
    assert items[0].options == ["Apples.", "Candles.", "Berries.", "The three kinds are of the same number."]
    assert [it.answer for it in items] == ["C", "B"]
    assert items[0].groups == {"duration": "short", "domain": "Knowledge", "task_type": "Counting Problem"}
    assert items[0].video == "fFjv93ACGo8.mp4"
    want = _touch(tmp_path / "videos" / "fFjv93ACGo8.mkv")  # another container is found too
    assert find_video(tmp_path / "videos", items[0]) == str(want)


def test_videomme_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    f = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(VIDEOMME_ROWS), f)
    assert [it.answer for it in read_videomme(f)] == ["C", "B"]


def test_videomme_bad_rows(tmp_path):
    f = tmp_path / "v.json"
    bad = dict(VIDEOMME_ROWS[0], options=["Apples.", "B. Candles."])
    f.write_text(json.dumps([bad]))
    with pytest.raises(ValueError, match="does not start with 'A.'"):
        read_videomme(f)
    f.write_text(json.dumps([dict(VIDEOMME_ROWS[0], answer="E")]))
    with pytest.raises(ValueError, match="not a letter"):
        read_videomme(f)
    f.write_text(json.dumps([{k: v for k, v in VIDEOMME_ROWS[0].items() if k != "videoID"}]))
    with pytest.raises(ValueError, match="'videoID'"):
        read_videomme(f)


def test_longvideobench_val_json(tmp_path):
    f = tmp_path / "lvb_val.json"
    f.write_text(json.dumps([
        {"video_id": "86CxyhFV9MI", "question": "In the video, which subtitles appear at the same time as the man "
         "with black hair?", "question_wo_referring_query": "Which subtitles appear?",
         "candidates": ["promisc has come to an end", "come on", "the fish", "none of the above"],
         "correct_choice": 1, "position": [10, 20], "topic_category": "NP-News-Programs",
         "question_category": "TOS", "level": "L2-Relation", "id": "86CxyhFV9MI_0",
         "video_path": "86CxyhFV9MI.mp4", "subtitle_path": "86CxyhFV9MI_en.json", "duration_group": 600,
         "starting_timestamp_for_subtitles": 0, "duration": 527.3, "view_count": 123},
        {"video_id": "zz", "question": "What happens?", "option0": "x", "option1": "y", "option2": "z",
         "option3": "N/A", "option4": "N/A", "correct_choice": 2, "id": "zz_0", "duration_group": 15,
         "question_category": "E2O"}]))  # lmms-eval's option0..4 rows, no video_path
    items = read_longvideobench(f)
    assert [it.id for it in items] == ["86CxyhFV9MI_0", "zz_0"]
    assert [it.answer for it in items] == ["B", "C"]
    assert items[1].options == ["x", "y", "z"]
    assert items[0].groups == {"duration_group": "600", "question_category": "TOS"}
    assert items[0].video == "86CxyhFV9MI.mp4" and items[1].video == "zz.mp4"
    assert items[0].meta["duration"] == 527.3
    f.write_text(json.dumps([{"video_id": "a", "question": "Q", "candidates": ["x", "y"], "correct_choice": 2}]))
    with pytest.raises(ValueError, match="correct_choice 2"):
        read_longvideobench(f)


def test_niah_and_duplicate_ids(tmp_path):
    f = tmp_path / "niah.json"
    row = {"id": "L10_d50_red", "video": "L10_d50_red.mp4", "question": "What colour?", "options": ["blue", "red"],
           "answer": "B", "length": 10, "depth": 50.0, "num_frames": 10, "needle": "red", "needle_frames": [5]}
    f.write_text(json.dumps({"benchmark": "niah", "items": [row]}))
    (it,) = read_niah(f)
    assert it.num_frames == 10 and it.groups == {"length": 10, "depth": 50.0} and it.meta["needle_frames"] == [5]
    f.write_text(json.dumps({"items": [row, row]}))
    with pytest.raises(ValueError, match="appears twice"):
        read_benchmark("niah", f)
    with pytest.raises(FileNotFoundError, match="tried"):
        find_video(tmp_path, it)
