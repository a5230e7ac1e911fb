"""Needle in a video haystack, end to end on CPU: train a tiny Video-XL to find a coloured flash, then run
the needle grid (haystack length x needle depth) through ``vxl_jax.eval`` and draw the heatmap.

1. Training data: grey-noise videos of 10-40 frames (1 frame per second) with one frame of a colour
   (blue / green / red / yellow) at a uniformly random position; the question lists the four colours as
   lettered options (the needle prompt of ``vxl_jax.eval.choice.niah_user``) and the answer is the letter.
2. Training: ``train.py``'s code path (``vxl_jax.train.loop.run``, configs/train_tiny.yaml: 4 visual tokens
   per frame, 10 frames per beacon window, ratio 8); the run is cached in ``--workdir`` (a finished run
   is reused).
3. The needle test: ``vxl_jax.eval.niah.make_niah`` (synthetic noise haystacks, the four colour needles,
   ``--lengths`` x ``--depths``), run with ``vxl_jax.eval.run_benchmark`` (each video encoded once, greedy
   answer, letter parsed), once normally and once with the beacon memory cut (``keep_memory=False``: the
   question cannot see the video; chance level), then the heatmap PNG and the table.

    python bench/niah_demo.py                       # defaults (a few minutes on 2 cores)
    python bench/niah_demo.py --steps 60 --lengths 10,20 --depths 0,100   # quick smoke run

Everything is written under --workdir (default runs/niah_demo, gitignored).

Measured (2-core CPU shared with other jobs, 2026-11-30; defaults): 367 s in all (training 313 s; each
80-item grid 10-17 s). Needle grid 10/20/40/80 frames x depth 0/25/50/75/100 %: 75 % in every cell
(blue, red and yellow flashes found everywhere, even at 80 frames, which is longer than any training
video; green is answered "yellow"). With the beacon memory cut: 25 % in every cell (chance 25 %).
Median seconds per question: 0.06 / 0.07 / 0.13 / 0.21 at 10 / 20 / 40 / 80 frames. Other runs: 2000
steps also 75 %; 300 steps 72.5 % (136 s of training) in one run, 50 % in another of 600 steps; lr 6e-3
collapsed to one letter (25 %); 1-frame needles in 10-40 frame videos gave 50 % after 300 and 900 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "train_tiny.yaml")


def make_training_data(root: str, n: int, lengths: tuple[int, int], needle_frames: int, seed: int) -> dict:
    """Write (or reuse) ``n`` training videos and their records -> {train, video_folder}."""
    from vxl_jax.media.video import write_video
    from vxl_jax.eval.choice import niah_user
    from vxl_jax.eval.niah import COLOUR_OPTIONS, COLOUR_QUESTION, FPS, colour_needles, insert_needle, noise_haystack

    out = {"train": os.path.join(root, "train.json"), "video_folder": os.path.join(root, "videos")}
    stamp = os.path.join(root, "dataset.json")
    params = {"n": n, "lengths": list(lengths), "needle_frames": needle_frames, "seed": seed, "version": 2}
    if os.path.isfile(stamp) and json.load(open(stamp)) == params:
        return out
    os.makedirs(out["video_folder"], exist_ok=True)
    rng = np.random.default_rng(seed)
    user = niah_user(COLOUR_QUESTION, COLOUR_OPTIONS)
    needles = colour_needles(frames=needle_frames)
    records = []
    for i in range(n):
        c = int(rng.integers(len(COLOUR_OPTIONS)))
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        hay = noise_haystack(length - needle_frames, seed=int(rng.integers(2 ** 31)))
        frames, _ = insert_needle(hay, needles[c].frames, float(rng.uniform(0, 100)))
        rel = f"train_{i:04d}.mp4"
        write_video(os.path.join(out["video_folder"], rel), frames, FPS)
        records.append({"id": f"train-{i}", "video": rel, "conversations": [
            {"from": "human", "value": "<image>\n" + user}, {"from": "gpt", "value": "ABCD"[c]}]})
    with open(out["train"], "w") as f:
        json.dump(records, f)
    with open(stamp, "w") as f:
        json.dump(params, f)
    return out


def train(work: str, a) -> tuple[str, dict]:
    """Train (or reuse) the tiny model -> (export folder, training summary)."""
    from vxl_jax.train.loop import run

    data = make_training_data(os.path.join(work, "train_data"), a.n_train, (a.train_min, a.train_max),
                              a.needle_frames, a.seed)
    overrides = [f"train.steps={a.steps}", f"train.batch_size={a.batch}", f"train.lr={a.lr}",
                 "train.warmup_ratio=0.05", "train.min_lr_ratio=0.1", "train.ratios=[8]", "train.eval_ratio=8",
                 "train.eval_every=0", "train.log_every=25", f"train.workdir={os.path.join(work, 'run')}",
                 f"train.seed={a.seed}", f"train.init_std={a.init_std}", f"data.train={data['train']}",
                 "data.eval=null", f"data.video_folder={data['video_folder']}",
                 f"data.frames_upbound={a.train_max}", "data.max_suffix=112", f"checkpoint.every={a.steps}"]
    t = time.time()
    summary = run(CONFIG, overrides)
    record = os.path.join(work, "train_summary.json")
    if summary.get("already_finished") and os.path.isfile(record):
        with open(record) as f:
            summary = {**json.load(f), **summary}  # the cached run's training time
    else:
        summary["wall_s"] = time.time() - t
        with open(record, "w") as f:
            json.dump({k: summary.get(k) for k in ("final_step", "train_time_s", "wall_s")}, f)
    return summary["export"], summary


def require_matplotlib() -> None:
    """Exit in one line, before any work, when the heatmap cannot be drawn (the ``eval`` extra is missing)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        sys.exit("error: the needle demo draws a heatmap, which needs matplotlib: pip install -e '.[eval]' "
                 "(or run with --train-only)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "niah_demo"))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--init-std", type=float, default=0.1)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--train-min", type=int, default=10, help="shortest training video (frames)")
    p.add_argument("--train-max", type=int, default=30, help="longest training video (frames)")
    p.add_argument("--needle-frames", type=int, default=2, help="frames of each colour needle")
    p.add_argument("--lengths", default="10,20,40,80", help="haystack lengths (frames)")
    p.add_argument("--depths", default="0,25,50,75,100", help="needle depths (percent)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-only", action="store_true")
    a = p.parse_args(argv)
    if not a.train_only:
        require_matplotlib()  # before minutes of training, not after
    t0 = time.time()
    work = os.path.abspath(a.workdir)
    export, summary = train(work, a)
    print(json.dumps({k: summary.get(k) for k in ("export", "final_step", "train_time_s", "wall_s")}), flush=True)
    if a.train_only:
        return summary
    res = evaluate(work, export, a, summary)
    print(f"demo wall time: {time.time() - t0:.0f} s (training data, training, needle test, control, heatmaps)")
    return res


def run_grid(vx, items, videos, out, keep_memory: bool) -> tuple[dict, float]:
    from vxl_jax.eval import RunSettings, run_benchmark

    t = time.time()
    settings = RunSettings("niah", "generate", max_new_tokens=4, ratio=8, keep_memory=keep_memory,
                           model="bench/niah_demo.py tiny model")
    summary = run_benchmark(vx, items, videos, out, settings=settings, progress=True)
    return summary, time.time() - t


def evaluate(work, export, a, train_summary):
    from vxl_jax.infer.api import VideoXL
    from vxl_jax.eval.__main__ import write_niah_report
    from vxl_jax.eval.heatmap import draw_heatmap, grid_table, niah_grid
    from vxl_jax.eval.niah import colour_needles, make_niah
    from vxl_jax.eval.readers import read_niah
    from vxl_jax.eval.results import ResultsFile

    lengths = [int(x) for x in a.lengths.split(",")]
    depths = [float(x) for x in a.depths.split(",")]
    tag = f"L{'-'.join(map(str, lengths))}_D{'-'.join(f'{d:g}' for d in depths)}_n{a.needle_frames}_s{a.seed}"
    test_dir = os.path.join(work, "niah_" + tag)
    t = time.time()
    ann = make_niah(test_dir, lengths, depths, needles=colour_needles(frames=a.needle_frames), seed=a.seed + 1,
                    progress=True)
    t_make = time.time() - t
    items = read_niah(ann)
    vx = VideoXL.load(export)
    out = os.path.join(work, "results_" + tag + f"_steps{a.steps}")
    summary, t_run = run_grid(vx, items, os.path.join(test_dir, "videos"), out, keep_memory=True)
    print(f"\nneedle test ({len(items)} items, memory kept):")
    write_niah_report(out)
    cut_out = out + "_memory_cut"
    cut, t_cut = run_grid(vx, items, os.path.join(test_dir, "videos"), cut_out, keep_memory=False)
    lengths_, depths_, acc_cut, _ = niah_grid(ResultsFile(os.path.join(cut_out, "results.jsonl")).records)
    draw_heatmap(os.path.join(cut_out, "heatmap.png"), lengths_, depths_, acc_cut,
                 title="Needle test, beacon memory cut (control)")
    print("\ncontrol, beacon memory cut (the question cannot see the video):")
    print(grid_table(lengths_, depths_, acc_cut))
    by_len = {}
    for r in ResultsFile(os.path.join(out, "results.jsonl")).records:
        by_len.setdefault(r["groups"]["length"], []).append(r["timing"]["item_s"])
    res = {"train_steps": a.steps, "train_time_s": round(train_summary.get("train_time_s") or 0, 1),
           "make_niah_s": round(t_make, 1), "eval_s": round(t_run, 1), "items": len(items),
           "accuracy": summary["accuracy"], "accuracy_memory_cut": cut["accuracy"], "chance": 0.25,
           "seconds_per_item": summary.get("seconds_per_item"),
           "seconds_per_item_median": summary.get("seconds_per_item_median"),
           "seconds_per_item_by_length": {k: round(float(np.median(v)), 4) for k, v in sorted(by_len.items())},
           "results": out, "heatmap": os.path.join(out, "heatmap.png")}
    print("\n| train steps | train time | items | accuracy | memory cut | chance | s / item (mean, with compiles) | "
          + " | ".join(f"s / item, {k} frames (median)" for k in res["seconds_per_item_by_length"]) + " |")
    print("|---" * (7 + len(res["seconds_per_item_by_length"])) + "|")
    print(f"| {a.steps} | {res['train_time_s']} s | {len(items)} | {summary['accuracy']:.1%} | {cut['accuracy']:.1%} "
          f"| 25% | {res['seconds_per_item']:.3f} | "
          + " | ".join(f"{v:.3f}" for v in res["seconds_per_item_by_length"].values()) + " |")
    print(json.dumps(res, indent=1))
    with open(os.path.join(work, "niah_demo.json"), "w") as f:
        json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
