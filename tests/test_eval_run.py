"""Running a benchmark: one encoding per video, answers from the saved memory equal answers from the full
prompt, log-likelihood scores equal the full prompt's logits, results resume after an interruption."""

import json

import numpy as np
import pytest

from vxl_jax.eval import RunSettings, read_benchmark, run_benchmark
from vxl_jax.eval.choice import STYLES, letter_logprobs, prompt_ids, text_logprobs
from vxl_jax.eval.results import ResultsFile
from vxl_jax.eval.run import encode_video, read_frames
from vxl_jax.media.video import sample_indices

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 50, 220)}


@pytest.fixture(scope="module")
def small_vx():
    """A random micro model (configs/train_tiny.yaml: 56 px frames, 4 tokens per frame, 10 frames per window)
    with the tiny tokenizer: fast enough to run a whole benchmark in a test."""
    from vxl_jax.infer.api import VideoXL
    from vxl_jax.config import VideoXLConfig
    from vxl_jax.infer.demo import GENERATION_DEFAULTS
    from vxl_jax.model import random_model
    from vxl_jax.text.tokenizer import build_tiny_tokenizer

    from conftest import ROOT

    cfg = VideoXLConfig.from_yaml(ROOT / "configs" / "train_tiny.yaml")
    return VideoXL(cfg, random_model(cfg, seed=3, std=0.2), build_tiny_tokenizer(), dict(GENERATION_DEFAULTS))


@pytest.fixture(scope="module")
def mlvu_set(tmp_path_factory):
    """MLVU dev layout: json/1_plotQA.json, json/2_needle.json; videos under video/<task>/ (3 videos, 6 questions)."""
    from vxl_jax.data.synthetic import colour_frames
    from vxl_jax.media.video import write_video

    root = tmp_path_factory.mktemp("mlvu")
    (root / "json").mkdir()
    tasks = {"1_plotQA": [("v0.mp4", "red"), ("v0.mp4", "green"), ("v1.mp4", "blue")],
             "2_needle": [("v2.mp4", "green"), ("v2.mp4", "red"), ("v2.mp4", "blue")]}
    for task, rows in tasks.items():
        (root / "video" / task).mkdir(parents=True)
        recs = []
        for k, (video, colour) in enumerate(rows):
            path = root / "video" / task / video
            if not path.exists():
                write_video(path, colour_frames(colour, 3, 12, 1, seed=k), fps=1)
            recs.append({"video": video, "duration": 12, "question": f"Is there a flash ({k})?",
                         "candidates": ["red", "green", "blue"], "answer": colour, "question_type": task[2:]})
        (root / "json" / f"{task}.json").write_text(json.dumps(recs))
    return root


def _strip_timing(path):
    out = []
    for line in open(path):
        rec = json.loads(line)
        rec.pop("timing")
        out.append(rec)
    return out


def test_each_video_encoded_once_and_summary(small_vx, mlvu_set, tmp_path, monkeypatch):
    items = read_benchmark("mlvu", mlvu_set / "json")
    calls = []
    real = small_vx.prefill
    monkeypatch.setattr(small_vx, "prefill", lambda *a, **k: (calls.append(np.shape(a[1])), real(*a, **k))[1])
    summary = run_benchmark(small_vx, items, mlvu_set, tmp_path, settings=RunSettings("mlvu", frames=12),
                            progress=False)
    assert len(calls) == 3 and all(c == (12, 56, 56, 3) for c in calls)  # 3 videos, 6 questions
    recs = ResultsFile(tmp_path / "results.jsonl").records
    assert [r["id"] for r in recs] == [it.id for it in items]
    for r, it in zip(recs, items):
        assert r["answer"] == it.answer and r["correct"] == (r["prediction"] == it.answer)
        assert set(r["timing"]) == {"read_s", "encode_s", "answer_s", "item_s"}
    assert summary["scored"] == summary["items"] == 6 and summary["complete"]
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in recs) / 6)
    assert set(summary["groups"]["task"]) == {"plotQA", "needle"}
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["accuracy"] == summary["accuracy"] and saved["settings"]["frames"] == 12


def test_answer_from_saved_memory_equals_full_prompt(small_vx, mlvu_set):
    """Encode once, ask many: generating from the video memory gives the ids a full prefill + generate gives."""
    items = read_benchmark("mlvu", mlvu_set / "json")
    style = STYLES["mlvu"]
    frames = read_frames(str(mlvu_set / "video" / "1_plotQA" / "v0.mp4"), 56, 12, None)
    memory, prefix = encode_video(small_vx, frames, style, items[0])
    for it in items[:2]:
        ids, after = prompt_ids(style, it.question, it.options, small_vx.tokenizer)
        np.testing.assert_array_equal(ids[:len(prefix)], prefix)
        full = small_vx.generate(ids, frames, max_new_tokens=6, do_sample=False)
        reused = small_vx.generate(after, None, memory=memory, max_new_tokens=6, do_sample=False)
        np.testing.assert_array_equal(full, reused)


def test_loglik_scores_equal_full_prompt_logits(small_vx, mlvu_set):
    items = read_benchmark("mlvu", mlvu_set / "json")
    style = STYLES["videomme"]
    it = items[0]
    frames = read_frames(str(mlvu_set / "video" / "1_plotQA" / "v0.mp4"), 56, 12, None)
    memory, _ = encode_video(small_vx, frames, style, it)
    ids, after = prompt_ids(style, it.question, it.options, small_vx.tokenizer)
    tok = small_vx.tokenizer

    def logp(row):
        row = np.asarray(row, np.float64)
        return row - row.max() - np.log(np.exp(row - row.max()).sum())

    last = logp(small_vx.prefill(ids, frames).logits[-1])
    letters = [tok(c, add_special_tokens=False)["input_ids"][0] for c in "ABC"]
    np.testing.assert_allclose(letter_logprobs(small_vx, memory, after, 3), last[letters], atol=1e-4)
    sums, counts = text_logprobs(small_vx, memory, after, it.options)
    for k, opt in enumerate(it.options):
        cont = tok(opt, add_special_tokens=False)["input_ids"]
        logits = small_vx.prefill(np.concatenate([ids, cont]), frames).logits  # text after the video, teacher-forced
        want = sum(logp(logits[len(after) - 1 + j])[t] for j, t in enumerate(cont))
        assert counts[k] == len(cont)
        assert sums[k] == pytest.approx(want, abs=1e-3)


def test_resume_after_interruption_gives_the_same_results(small_vx, mlvu_set, tmp_path):
    items = read_benchmark("mlvu", mlvu_set / "json")
    settings = RunSettings("mlvu", frames=12, scoring="loglik")
    full = tmp_path / "full"
    run_benchmark(small_vx, items, mlvu_set, full, settings=settings, progress=False)

    class Crash(KeyboardInterrupt):
        pass

    def crash_after(n):
        seen = []

        def hook(rec):
            seen.append(rec["id"])
            if len(seen) == n:
                raise Crash
        return hook

    part = tmp_path / "part"
    with pytest.raises(Crash):  # interrupted in the middle of video v2 (items 0-3 written, v2 had 3 questions)
        run_benchmark(small_vx, items, mlvu_set, part, settings=settings, progress=False, after_item=crash_after(4))
    assert len(ResultsFile(part / "results.jsonl").records) == 4
    assert json.loads((part / "summary.json").read_text())["complete"] is False
    with open(part / "results.jsonl", "a") as f:
        f.write('{"id": "2_needle/1", "correct": tr')  # a torn line from a kill mid-write: not a finished item
    answered = []
    run_benchmark(small_vx, items, mlvu_set, part, settings=settings, progress=False,
                  after_item=lambda r: answered.append(r["id"]))
    assert answered == [it.id for it in items[4:]]  # only the unfinished ones, none twice
    assert _strip_timing(part / "results.jsonl") == _strip_timing(full / "results.jsonl")
    assert json.loads((part / "summary.json").read_text())["accuracy"] == \
        json.loads((full / "summary.json").read_text())["accuracy"]
    again = []  # a finished run scores nothing more
    run_benchmark(small_vx, items, mlvu_set, part, settings=settings, progress=False,
                  after_item=lambda r: again.append(r))
    assert again == []
    with pytest.raises(ValueError, match="already in"):
        ResultsFile(part / "results.jsonl").append({"id": items[0].id})
    with pytest.raises(ValueError, match="other settings"):
        run_benchmark(small_vx, items, mlvu_set, part, settings=RunSettings("mlvu", frames=8), progress=False)


def test_cli_niah_end_to_end(small_vx, tmp_path, monkeypatch, capsys):
    """niah generator CLI -> eval CLI (embedded model replaced by the micro model) -> results, summary, heatmap;
    a rerun appends nothing; bad input is exit 2 with a one-line error."""
    import vxl_jax.infer.demo
    import vxl_jax.eval.__main__ as cli
    from vxl_jax.eval.niah import main as niah_main

    assert niah_main(["--out", str(tmp_path / "niah"), "--lengths", "4,6", "--depths", "0,100"]) == 0
    for module in (vxl_jax.infer.demo, cli):  # wherever the CLI looks the embedded model up
        monkeypatch.setattr(module, "default_model", lambda dtype="float32": small_vx, raising=False)
    common = ["--benchmark", "niah", "--annotations", str(tmp_path / "niah" / "niah.json"), "--videos",
              str(tmp_path / "niah" / "videos"), "--quiet", "--max-new-tokens", "3"]
    assert cli.main(common + ["--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "| depth \\ frames | 4 | 6 | mean |" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["scored"] == summary["items"] == 2 * 2 * 4
    assert set(summary["groups"]) == {"length", "depth"}
    assert (tmp_path / "out" / "heatmap.md").is_file()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "out" / "heatmap.png").stat().st_size > 1000
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert cli.main(common + ["--out", str(tmp_path / "out")]) == 0  # rerun: nothing to do, nothing appended
    assert (tmp_path / "out" / "results.jsonl").read_text().splitlines() == lines
    capsys.readouterr()
    assert cli.main(common + ["--out", str(tmp_path / "o2"), "--frames", "0"]) == 2
    assert cli.main(["--benchmark", "niah", "--annotations", str(tmp_path / "missing.json"), "--videos", str(tmp_path),
                 "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "--frames must be >= 1" in err and "annotation file not found" in err


def test_fps_sampling(mlvu_set):
    """--fps samples as infer.py and training do (vxl_jax.media.video.sample_indices): every round(rate / fps)-th
    frame (here 25 / 2 -> 12, Python's round), capped by --frames."""
    np.testing.assert_array_equal(sample_indices(100, 25.0, fps=1.0), [0, 25, 50, 75])
    np.testing.assert_array_equal(sample_indices(100, 25.0, fps=2.0), [0, 12, 24, 36, 48, 60, 72, 84, 96])
    assert len(sample_indices(3000, 30.0, fps=1.0, max_frames=16)) == 16
    frames = read_frames(str(mlvu_set / "video" / "1_plotQA" / "v0.mp4"), 56, None, 0.5)  # 12 s at 1 fps
    assert frames.shape == (6, 56, 56, 3)


def test_summary_groups_and_task_mean():
    from vxl_jax.eval.results import summarize

    recs = [{"id": str(i), "correct": c, "prediction": p, "groups": {"task": t, "duration": d},
             "timing": {"item_s": s}}
            for i, (c, p, t, d, s) in enumerate([(True, "A", "count", "short", 1.0), (False, None, "count", "long", 3.0),
                                                  (True, "B", "ego", "long", 2.0)])]
    s = summarize(recs, total=4)
    assert s["accuracy"] == pytest.approx(2 / 3) and s["scored"] == 3 and s["complete"] is False
    assert s["groups"]["task"]["count"] == {"accuracy": 0.5, "correct": 1, "total": 2}
    assert s["groups"]["duration"]["long"]["accuracy"] == 0.5
    assert s["task_mean"] == pytest.approx((0.5 + 1.0) / 2)  # MLVU's M-Avg: mean over tasks, not over questions
    assert s["unparsed"] == 1
    assert s["seconds_per_item"] == pytest.approx(2.0) and s["seconds_per_item_median"] == 2.0
