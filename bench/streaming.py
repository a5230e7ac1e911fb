"""Streaming ingestion and batched answering (issue 10), on the embedded tiny model, CPU.

    python bench/streaming.py                 # 30-minute generated video at 1 fps (1 800 frames)
    python bench/streaming.py --minutes 6     # shorter

A low-resolution sample video (moving shapes, 1 frame per second) is generated, read with
``VideoStream(fps=1)`` a window of frames at a time and added to a session (``vx.session`` /
``add_frames``). Printed: RSS (current and peak so far) and the kept KV at 5, 15 and 30 minutes of video,
frames per second ingested, then the time to answer 8 questions over the 30-minute memory in one batched
call vs one call each (greedy, fixed length; compile time excluded: both are run once before timing).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

QUESTIONS = ["What is in the video?", "What colour is the square?", "Where does the disc go?",
             "How long is the green bar at the end?", "What happens first?", "Is anything red?",
             "Describe the background.", "How many shapes move?"]


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB (/proc/self/status)."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, kb = line.split()[:2]
                vals[key] = int(kb) / 1024
    return vals["VmRSS:"], vals["VmHWM:"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=int, default=30)
    p.add_argument("--ratio", type=int, default=8)
    p.add_argument("--size", default="96x64", help="generated video size WxH (default 96x64)")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--video", default=None, help="use this video instead of generating one")
    a = p.parse_args(argv)

    from vxl_jax.infer.demo import default_model
    from vxl_jax.text.prompt import DEFAULT_SYSTEM, chat_prompt, suffix_ids, tokenizer_image_token
    from vxl_jax.infer.api import split_prompt
    from vxl_jax.media.video import TimedReader, VideoStream, write_sample_video

    w, h = (int(x) for x in a.size.split("x"))
    frames_total = a.minutes * 60
    tmp = tempfile.mkdtemp(prefix="vxl_stream_bench_")
    path = a.video or os.path.join(tmp, "long.mp4")
    if a.video is None:
        t = time.perf_counter()
        write_sample_video(path, num_frames=frames_total, size=(w, h), fps=1)
        print(f"generated {a.minutes} min {w}x{h} at 1 fps in {time.perf_counter() - t:.1f} s: {path}", file=sys.stderr)

    vx = default_model()
    prefix, _ = split_prompt(tokenizer_image_token(chat_prompt("?", DEFAULT_SYSTEM), vx.tokenizer))
    stream = VideoStream(path, fps=1, size=vx.cfg.vision.image_size, batch=vx.cfg.beacon.frames_per_window)
    lm = vx.cfg.lm
    slot_bytes = lm.num_layers * 2 * lm.num_kv_heads * lm.head_dim * np.dtype(np.float32).itemsize
    checkpoints = {m * 60 for m in (5, 15, 30) if m <= a.minutes} | {frames_total}
    rows = []
    base_rss, _ = rss_mib()
    session = vx.session(prefix, ratio=a.ratio)
    t0 = time.perf_counter()
    c0 = vx.engine.compile_s
    reader = TimedReader(stream)
    for chunk in reader:
        session.add_frames(chunk)
        if session.frames in checkpoints:
            cur, peak = rss_mib()
            kv = session.state.kv
            rows.append({"minute": session.frames / 60, "frames": session.frames, "rss": cur, "peak": peak,
                         "kept": kv.host_sizes()["total"], "kv_buffer": kv.capacity * slot_bytes / 2**20,
                         "wall": time.perf_counter() - t0, "compile": vx.engine.compile_s - c0})
    ingest_s = time.perf_counter() - t0
    compile_s = vx.engine.compile_s - c0

    print(f"\n## Streaming ingestion: tiny model, ratio {a.ratio}, {w}x{h} video at 1 fps "
          f"(model loaded: RSS {base_rss:.0f} MiB)\n")
    print("| video | frames | RSS now | peak RSS so far | kept KV slots | KV buffer | wall so far | of which compile |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['minute']:.0f} min | {r['frames']} | {r['rss']:.0f} MiB | {r['peak']:.0f} MiB | {r['kept']} | "
              f"{r['kv_buffer']:.1f} MiB | {r['wall']:.1f} s | {r['compile']:.1f} s |")
    steady = [r for r in rows if r["frames"] >= 300]
    rate = frames_total / (ingest_s - compile_s)
    line = f"\nframes/s ingested: {frames_total / ingest_s:.1f} overall, {rate:.1f} without compilation"
    if len(steady) >= 2:
        a0, a1 = steady[0], steady[-1]
        run = (a1["wall"] - a0["wall"]) - (a1["compile"] - a0["compile"])
        line += f", {(a1['frames'] - a0['frames']) / run:.1f} from minute {a0['minute']:.0f} to {a1['minute']:.0f}"
    print(line + f" (decoding + resizing the video: {reader.seconds:.1f} s of it)")

    # ---------------------------------------------------------------- 8 questions over the memory
    vm = session.video_memory()
    qs = [suffix_ids(q, vx.tokenizer) for q in QUESTIONS]
    kw = dict(max_new_tokens=a.new_tokens, stop_ids=[], do_sample=False)

    def one_by_one():
        return [vx.generate(q, None, memory=vm, **kw) for q in qs]

    def batched():
        return vx.generate(qs, None, memory=vm, **kw)

    timings = {}
    for name, fn in (("one by one", one_by_one), ("batched", batched)):
        t = time.perf_counter()
        fn()
        cold = time.perf_counter() - t
        t = time.perf_counter()
        out = fn()
        timings[name] = (cold, time.perf_counter() - t, out)
    same = all(np.array_equal(x, y) for x, y in zip(timings["one by one"][2], timings["batched"][2]))
    print(f"\n## 8 questions over the {a.minutes}-minute memory ({vm.sizes['total']} slots), "
          f"{a.new_tokens} greedy tokens each\n")
    print("| mode | first run (with compile) | warm run | per question |")
    print("|---|---|---|---|")
    for name, (cold, warm, _) in timings.items():
        print(f"| {name} | {cold:.2f} s | {warm:.2f} s | {warm / len(qs) * 1000:.0f} ms |")
    print(f"\nbatched / one by one (warm): {timings['batched'][1] / timings['one by one'][1]:.2f}x time; "
          f"answers identical: {same}")
    if a.video is None:
        os.remove(path)
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
