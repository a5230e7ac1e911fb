"""The suite mode end to end on CPU: a data folder with every benchmark in its release's layout (small files,
short generated videos), ``python -m vxl_jax.eval --suite`` on the embedded tiny model -> each benchmark's
results, suite.md in the layout of the paper's Tables 1-2 and the needle heatmap. The suite's results for a
benchmark equal a ``--benchmark`` run of it; the table's numbers equal the papers' rules applied to the results."""

import json

import pytest

from vxl_jax.eval.suite import find_benchmarks

FRAMES = 4  # every video is read as 4 frames (one vision shape for the whole test)


def _video(path, seconds=4, fps=2):
    from vxl_jax.media.video import write_sample_video

    path.parent.mkdir(parents=True, exist_ok=True)
    write_sample_video(path, num_frames=seconds * fps, size=(64, 48), fps=fps)


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _mlvu_vnbench_lvb(data):
    _write(data / "MLVU" / "json" / "1_plotQA.json", [
        {"video": "m0.mp4", "duration": 4, "question": f"What moves ({k})?", "candidates": ["a box", "a ball"],
         "answer": "a ball", "question_type": "plotQA"} for k in range(2)])
    _write(data / "MLVU" / "json" / "2_needle.json", [
        {"video": "n0.mp4", "duration": 4, "question": "What colour?", "candidates": ["red", "blue", "green"],
         "answer": "red", "question_type": "needle"}])
    _video(data / "MLVU" / "video" / "1_plotQA" / "m0.mp4")
    _video(data / "MLVU" / "video" / "2_needle" / "n0.mp4")
    opts = ["blue", "red", "green", "yellow"]
    _write(data / "VNBench" / "VNBench-main-4try.json", [
        {"video": "./VNBench_new/v_ret_insert1.mp4", "question": "What colour is the needle?",
         "options": opts[t:] + opts[:t], "gt": "red", "type": "ret_insert1", "try": t} for t in range(2)])
    _video(data / "VNBench" / "VNBench_new" / "v_ret_insert1.mp4", seconds=4, fps=3)  # 1 fps: 4 frames
    _write(data / "LongVideoBench" / "lvb_val.json", [
        {"video_id": "l0", "question": "What happens?", "candidates": ["x", "y"], "correct_choice": 1, "id": "l0_0",
         "video_path": "l0.mp4", "duration_group": 15, "question_category": "E2O"}])
    _video(data / "LongVideoBench" / "videos" / "l0.mp4")


def _vmme_mvbench_nextqa(data):
    _write(data / "Video-MME" / "videomme" / "test.json", [
        {"video_id": "001", "duration": "short", "domain": "Knowledge", "videoID": "vm0", "question_id": "001-1",
         "task_type": "Counting Problem", "question": "How many?", "options": ["A. 1", "B. 2", "C. 3", "D. 4"],
         "answer": "B"}])
    _video(data / "Video-MME" / "data" / "vm0.mp4")
    _write(data / "MVBench" / "json" / "action_sequence.json", [
        {"video": "as0.mp4", "question": "What happened first?", "candidates": ["Sat.", "Stood."],
         "answer": "Sat.", "start": 1.0, "end": 4.0}])
    _write(data / "MVBench" / "json" / "moving_count.json", [
        {"video": "mc0.mp4", "question": "How many objects move?", "candidates": ["0", "1", "2"], "answer": "1"}])
    _video(data / "MVBench" / "video" / "star" / "Charades_v1_480" / "as0.mp4", seconds=6)
    _video(data / "MVBench" / "video" / "clevrer" / "video_validation" / "mc0.mp4")
    _write(data / "NExTQA" / "nextqa" / "val.csv",
           "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"
           "1234,8,64,48,why does the ball move,1,0,CW,wind,kicked,rolled,thrown,fell\n"
           "1234,8,64,48,what happens after the ball stops,0,1,TN,it stays,it jumps,it flies,it breaks,it melts\n")
    _write(data / "NExTQA" / "nextqa" / "map_vid_vidorID.json", {"1234": "0007/1234"})
    _video(data / "NExTQA" / "NExTVideo" / "0007" / "1234.mp4")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from vxl_jax.eval.niah import colour_needles, make_niah

    root = tmp_path_factory.mktemp("suite_data")
    _mlvu_vnbench_lvb(root)
    _vmme_mvbench_nextqa(root)
    make_niah(root / "niah", lengths=[FRAMES], depths=[0, 100], needles=colour_needles()[:2])
    return root


def _records(path):
    out = []
    for line in open(path):
        rec = json.loads(line)
        rec.pop("timing")
        out.append(rec)
    return out


def test_find_benchmarks(data, tmp_path):
    found = {f.name: f for f in find_benchmarks(data)}
    assert list(found) == ["mlvu", "vnbench", "longvideobench", "videomme", "mvbench", "nextqa", "niah"]
    assert found["mlvu"].annotations == str(data / "MLVU" / "json")
    assert found["videomme"].annotations == str(data / "Video-MME" / "videomme" / "test.json")
    assert found["videomme"].videos == str(data / "Video-MME" / "data")
    assert found["mvbench"].videos == str(data / "MVBench" / "video")
    assert found["nextqa"].annotations == str(data / "NExTQA" / "nextqa" / "val.csv")
    with pytest.raises(FileNotFoundError, match="no benchmark folder"):
        find_benchmarks(tmp_path)


def test_suite_end_to_end(data, tmp_path, capsys):
    import vxl_jax.eval.__main__ as cli
    from vxl_jax.eval.scores import paper_scores

    out = tmp_path / "out"
    common = ["--quiet", "--frames", str(FRAMES), "--max-new-tokens", "2"]
    assert cli.main(["--suite", str(data), "--out", str(out), *common]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == {"mlvu", "vnbench", "longvideobench", "videomme", "mvbench", "nextqa", "niah"}
    counts = {"mlvu": 3, "vnbench": 2, "longvideobench": 1, "videomme": 1, "mvbench": 2, "nextqa": 2, "niah": 4}
    scores = json.loads((out / "suite.json").read_text())["scores"]
    for name, n in counts.items():
        recs = _records(out / name / "results.jsonl")
        assert len(recs) == n, name
        assert all(r["frames"] == FRAMES for r in recs), name  # VNBench at 1 fps: 4 s -> 4 frames; MVBench's clip
        want = paper_scores(name, recs)
        assert scores[name]["score"] == want["score"] and printed[name] == want["score"]
        assert json.loads((out / name / "summary.json").read_text())["paper"]["score"] == want["score"]
    mlvu = _records(out / "mlvu" / "results.jsonl")  # M-Avg: the mean of the task accuracies
    plot = sum(r["correct"] for r in mlvu[:2]) / 2
    assert scores["mlvu"]["score"] == pytest.approx((plot + mlvu[2]["correct"]) / 2)
    vn = _records(out / "vnbench" / "results.jsonl")  # circular: both tries right
    assert scores["vnbench"]["score"] == float(all(r["correct"] for r in vn))
    table = (out / "suite.md").read_text()

    def pct(v):
        return f"{100 * v:.1f}"
    row1 = "| embedded tiny model | " + " | ".join(pct(scores[b]["score"]) for b in
                                                  ("mlvu", "vnbench", "longvideobench", "videomme")) + " |"
    row2 = f"| embedded tiny model | {pct(scores['mvbench']['score'])} | {pct(scores['nextqa']['score'])} |"
    assert "| Model | MLVU (M-Avg) | VNBench | LongVideoBench | Video-MME (w/o subs) |" in table and row1 in table
    assert "| Model | MVBench | NExT-QA |" in table and row2 in table
    for group in ("plotQA", "retrieval", "ret_insert1", "short", "action_sequence", "moving_count", "causal",
                  "temporal", "depth 100%", "| depth \\ frames | 4 | mean |"):
        assert group in table, group
    assert (out / "niah" / "heatmap.md").is_file()
    # the suite's NExT-QA equals a --benchmark run of it
    alone = tmp_path / "alone"
    assert cli.main(["--benchmark", "nextqa", "--annotations", str(data / "NExTQA" / "nextqa" / "val.csv"),
                     "--videos", str(data / "NExTQA"), "--out", str(alone), *common]) == 0
    assert _records(alone / "results.jsonl") == _records(out / "nextqa" / "results.jsonl")
    lines = (out / "mvbench" / "results.jsonl").read_text()
    assert cli.main(["--suite", str(data), "--out", str(out), *common]) == 0  # a rerun resumes: nothing to do
    assert (out / "mvbench" / "results.jsonl").read_text() == lines
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # a usage error: argparse's exit
        cli.main(["--suite", str(data), "--benchmark", "mlvu", "--out", str(out)])
    assert e.value.code == 2
    assert cli.main(["--suite", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "leave out --benchmark" in err and "suite data folder not found" in err
