"""Load on the server (issue 19): the "small" model behind the real HTTP stack, streaming clients on loopback.

    python bench/serve_load.py                        # concurrency 1 / 4 / 8 / 16, cached and uncached videos
    python bench/serve_load.py --levels 1,8 --requests 16 --max-seconds 60

The "small" config (LLM hidden 256 x 4 layers, 8 heads / 2 KV heads, intermediate 768; CLIP hidden 128 x 4 layers
at 336 px; vocab 512 so that the embedded tiny tokenizer covers every id), random weights, fp32, ratio 8,
greedy, ``--new-tokens`` per answer. The server (``create_app`` + uvicorn on 127.0.0.1, a free port, the real
scheduler with ``--max-rows`` rows) is sent streaming chat completions by asyncio clients (httpx2, in a child
process: they share no interpreter with the server), ``c`` at a time, each sending its next request when its
answer ends:

- cached: questions over ``--videos`` clips whose memories are already in the cache (each asked once first);
- uncached: a server whose cache keeps nothing (0 bytes), round-robin over as many clips as the concurrency, so
  every request encodes its video (no two requests in flight share one).

Per level: requests/s, generated tokens/s, time to first token (request sent -> first content event) and
per-token latency ((last token - first event) / the tokens after the first event, per request) at p50 / p99. Each
level first runs its load untimed (``--warmup`` passes: the scheduler's row-count and capacity buckets compile).
Bounded: ``--requests`` per level and ``--max-seconds`` per level; loopback only. Goals: at concurrency 8 over
cached videos, tokens/s >= 4x concurrency 1; p99 TTFT (cached) <= 2x its p50.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

QUESTION = "Question {i}: what happens in the video?"


def small_vx():
    """The small model (random weights, seed 0) with the tiny tokenizer, greedy defaults."""
    from vxl_jax.config import tiny_config
    from vxl_jax.infer.api import VideoXL
    from vxl_jax.infer.demo import GENERATION_DEFAULTS
    from vxl_jax.model import random_model
    from vxl_jax.text.tokenizer import build_tiny_tokenizer

    tiny = tiny_config()
    cfg = tiny.replace(
        vision=dataclasses.replace(tiny.vision, image_size=336, patch_size=14, hidden_size=128, intermediate_size=512,
                                   num_layers=4, num_heads=4),
        projector=dataclasses.replace(tiny.projector, in_features=128),
        lm=dataclasses.replace(tiny.lm, vocab_size=512, hidden_size=256, intermediate_size=768, num_layers=4,
                               num_heads=8, num_kv_heads=2))
    return VideoXL(cfg, random_model(cfg, seed=0), build_tiny_tokenizer(), dict(GENERATION_DEFAULTS))


def make_videos(folder: str, n: int, frames: int) -> list[str]:
    """``n`` distinct generated clips (different sizes: different content hashes) -> their names."""
    from vxl_jax.media.video import write_sample_video

    names = []
    for i in range(n):
        name = f"clip{i}.mp4"
        write_sample_video(os.path.join(folder, name), num_frames=frames, size=(160 + 16 * i, 96))
        names.append(name)
    return names


def start_server(vx, media: str, max_rows: int, cache_bytes: int, frames: int):
    from vxl_jax.serve.app import Settings, create_app
    from vxl_jax.serve.cache import VideoCache
    from vxl_jax.serve.scheduler import Scheduler
    from vxl_jax.serve.server import BackgroundServer

    scheduler = Scheduler(vx, max_rows=max_rows, max_queue=256, cache=VideoCache(max_bytes=cache_bytes),
                          default_frames=frames)
    app = create_app(vx, scheduler, Settings("small", media_root=media, timeout_s=600))
    return BackgroundServer(app).start(), scheduler


@dataclasses.dataclass
class Sample:
    ttft_s: float
    per_token_s: float | None
    tokens: int


async def one_request(client, video: str, i: int, new_tokens: int) -> Sample:
    """One streaming chat completion -> its time to first token, per-token latency and token count."""
    body = {"model": "small", "max_tokens": new_tokens, "stream": True, "return_token_ids": True,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                                      {"type": "text", "text": QUESTION.format(i=i % 10)}]}]}
    t0, first, last, tokens, n_first = time.perf_counter(), None, None, 0, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:])["choices"]
            n = len(choices[0].get("token_ids") or []) if choices else 0
            if n:
                now = time.perf_counter()
                if first is None:
                    first, n_first = now, n
                last, tokens = now, tokens + n
    if first is None:
        raise RuntimeError("an answer without tokens")
    # the first event's tokens arrive together: per-token latency counts the tokens after it
    return Sample(first - t0, (last - first) / (tokens - n_first) if tokens > n_first else None, tokens)


async def run_level(url: str, videos: list[str], c: int, n_requests: int, max_seconds: float, new_tokens: int):
    """``c`` clients, ``n_requests`` in all (fewer if ``max_seconds`` runs out) -> (samples, wall seconds)."""
    import httpx2 as httpx

    todo = iter(range(n_requests))
    deadline = time.perf_counter() + max_seconds
    samples: list[Sample] = []

    async def client_loop(client):
        for i in todo:
            if time.perf_counter() > deadline:
                return
            samples.append(await one_request(client, videos[i % len(videos)], i, new_tokens))

    limits = httpx.Limits(max_connections=c + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[client_loop(client) for _ in range(c)])
        return samples, time.perf_counter() - t0


def client_level(url: str, videos: list[str], c: int, n: int, max_seconds: float, new_tokens: int):
    """:func:`run_level` in a child process (no jax there), so the clients share no interpreter (GIL) with the
    server and its scheduler -> (samples, wall seconds)."""
    job = json.dumps({"url": url, "videos": videos, "c": c, "n": n, "max_seconds": max_seconds,
                      "new_tokens": new_tokens})
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--client", job], capture_output=True, text=True,
                       timeout=max_seconds + 900 if max_seconds < 1e8 else None, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"the client process failed: {r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return [Sample(**d) for d in out["samples"]], out["wall_s"]


def client_main(job: str) -> None:
    j = json.loads(job)
    samples, wall = asyncio.run(run_level(j["url"], j["videos"], j["c"], j["n"], j["max_seconds"], j["new_tokens"]))
    print(json.dumps({"samples": [dataclasses.asdict(x) for x in samples], "wall_s": wall}))


def summary(mode: str, c: int, samples: list[Sample], wall: float) -> dict:
    ttft = np.array([s.ttft_s for s in samples])
    per_token = np.array([s.per_token_s for s in samples if s.per_token_s is not None] or [np.nan])
    tokens = sum(s.tokens for s in samples)
    pct = lambda a, q: float(np.percentile(a, q))  # noqa: E731
    return {"mode": mode, "concurrency": c, "requests": len(samples), "wall_s": round(wall, 3),
            "req_per_s": len(samples) / wall, "tokens_per_s": tokens / wall,
            "ttft_p50_ms": 1e3 * pct(ttft, 50), "ttft_p99_ms": 1e3 * pct(ttft, 99),
            "tpot_p50_ms": 1e3 * pct(per_token, 50), "tpot_p99_ms": 1e3 * pct(per_token, 99)}


def print_table(rows: list[dict]) -> None:
    print("| videos | concurrency | requests | req/s | tokens/s | TTFT p50 / p99 ms | per-token p50 / p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['req_per_s']:.2f} | {r['tokens_per_s']:.1f} "
              f"| {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {r['tpot_p50_ms']:.1f} / {r['tpot_p99_ms']:.1f} |")


def goals(rows: list[dict]) -> list[str]:
    cached = {r["concurrency"]: r for r in rows if r["mode"] == "cached"}
    out = []
    if 1 in cached and 8 in cached:
        x = cached[8]["tokens_per_s"] / cached[1]["tokens_per_s"]
        out.append(f"cached tokens/s at concurrency 8 = {x:.2f}x concurrency 1 (goal >= 4): "
                   f"{'met' if x >= 4 else 'NOT met'}")
    for c, r in sorted(cached.items()):
        x = r["ttft_p99_ms"] / r["ttft_p50_ms"]
        out.append(f"cached TTFT p99 / p50 at concurrency {c} = {x:.2f} (goal <= 2): {'met' if x <= 2 else 'NOT met'}")
    return out


def bench_mode(vx, a, mode: str, media: str, videos: list[str]) -> list[dict]:
    """Every level of one mode on its own server (cached: a 1 GiB cache, warmed; uncached: a 0-byte cache)."""
    server, _ = start_server(vx, media, a.max_rows, (1 << 30) if mode == "cached" else 0, a.frames)
    rows = []
    try:
        if mode == "cached":
            client_level(server.url, videos[:a.videos], 1, a.videos, 1e9, a.new_tokens)
        for c in a.levels:
            pool = videos[:a.videos] if mode == "cached" else videos[:max(c, 2)]
            n = max(a.requests, 2 * c)
            for _ in range(a.warmup):  # the same load untimed: the row / capacity buckets it meets compile
                client_level(server.url, pool, c, n, a.max_seconds, a.new_tokens)
            samples, wall = client_level(server.url, pool, c, n, a.max_seconds, a.new_tokens)
            rows.append(summary(mode, c, samples, wall))
            print("RESULT " + json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="1,4,8,16", help="concurrency levels (default 1,4,8,16)")
    p.add_argument("--requests", type=int, default=16, help="timed requests per level, at least 2x the "
                                                            "concurrency (default 16)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="time cap per level (default 120)")
    p.add_argument("--new-tokens", type=int, default=64, help="max_tokens per answer (default 64: 4 decode chunks)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes of each level's load first (default 1)")
    p.add_argument("--frames", type=int, default=20, help="frames per video (default 20)")
    p.add_argument("--videos", type=int, default=2, help="distinct videos of the cached runs (default 2)")
    p.add_argument("--max-rows", type=int, default=16, help="the scheduler's decode rows (default 16)")
    p.add_argument("--modes", default="cached,uncached")
    p.add_argument("--client", default=None, help=argparse.SUPPRESS)  # internal: one level's clients (JSON job)
    a = p.parse_args(argv)
    if a.client is not None:
        return client_main(a.client)
    a.levels = [int(x) for x in a.levels.split(",")]
    media = tempfile.mkdtemp(prefix="vxl_serve_bench_")
    videos = make_videos(media, max(max(a.levels), a.videos, 2), a.frames)
    from vxl_jax.runtime.compile_cache import default_cache_dir, enable_compilation_cache

    enable_compilation_cache(default_cache_dir())  # reruns read their compiled programs from disk
    vx = small_vx()
    rows = []
    for mode in a.modes.split(","):
        rows += bench_mode(vx, a, mode, media, videos)
    print_table(rows)
    for line in goals(rows):
        print(line)


if __name__ == "__main__":
    main()
