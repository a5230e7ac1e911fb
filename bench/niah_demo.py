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


def make_training_data(root: str, n: int, lengths: tuple[int, int], seed: int) -> dict:
    """Write (or reuse) ``n`` training videos and their records -> {train, video_folder}."""
    from vxl_jax.data.synthetic import colour_frames, write_video
    from vxl_jax.eval.niah import COLOUR_OPTIONS, COLOUR_QUESTION, FPS
    from vxl_jax.eval.choice import niah_user

    out = {"train": os.path.join(root, "train.json"), "video_folder": os.path.join(root, "videos")}
    stamp = os.path.join(root, "dataset.json")
    params = {"n": n, "lengths": list(lengths), "seed": seed, "version": 1}
    if os.path.isfile(stamp) and json.load(open(stamp)) == params:
        return out
    os.makedirs(out["video_folder"], exist_ok=True)
    rng = np.random.default_rng(seed)
    user = niah_user(COLOUR_QUESTION, COLOUR_OPTIONS)
    records = []
    for i in range(n):
        c = int(rng.integers(len(COLOUR_OPTIONS)))
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        pos = int(rng.integers(length))
        rel = f"train_{i:04d}.mp4"
        write_video(os.path.join(out["video_folder"], rel),
                    colour_frames(COLOUR_OPTIONS[c], pos, length, FPS, seed=int(rng.integers(2 ** 31))), FPS)
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

    data = make_training_data(os.path.join(work, "train_data"), a.n_train, (a.train_min, a.train_max), a.seed)
    overrides = [f"train.steps={a.steps}", f"train.batch_size={a.batch}", f"train.lr={a.lr}",
                 "train.warmup_ratio=0.05", "train.min_lr_ratio=0.1", "train.ratios=[8]", "train.eval_ratio=8",
                 "train.eval_every=0", "train.log_every=25", f"train.workdir={os.path.join(work, 'run')}",
                 f"train.seed={a.seed}", f"train.init_std={a.init_std}", f"data.train={data['train']}",
                 "data.eval=null", f"data.video_folder={data['video_folder']}",
                 f"data.frames_upbound={a.train_max}", "data.max_suffix=112", f"checkpoint.every={a.steps}"]
    t = time.time()
    summary = run(CONFIG, overrides)
    summary["wall_s"] = time.time() - t
    return summary["export"], summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "niah_demo"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--init-std", type=float, default=0.1)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--train-min", type=int, default=10, help="shortest training video (frames)")
    p.add_argument("--train-max", type=int, default=40, help="longest training video (frames)")
    p.add_argument("--lengths", default="10,20,40,80", help="haystack lengths (frames)")
    p.add_argument("--depths", default="0,25,50,75,100", help="needle depths (percent)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-only", action="store_true")
    a = p.parse_args(argv)
    work = os.path.abspath(a.workdir)
    export, summary = train(work, a)
    print(json.dumps({k: summary.get(k) for k in ("export", "final_step", "train_time_s", "wall_s")}), flush=True)
    if a.train_only:
        return summary
    return evaluate(work, export, a, summary)


def evaluate(work, export, a, train_summary):
    raise NotImplementedError  # filled in below once the eval package exists


if __name__ == "__main__":
    main()
