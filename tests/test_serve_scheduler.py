"""The server's scheduler (vxl_jax/serve/scheduler.py) on the embedded tiny model: continuous batching gives each
request exactly what ``vx.generate`` gives it alone (greedy ids; a sampled row's draws with its seed), whatever
else is in the batch; a video is encoded once (the cache); cancelled rows free their slot; a bad video fails only
its own request. One scheduler (4 decode rows) serves the whole module."""

import asyncio

import numpy as np
import pytest

from vxl_jax.infer.results import split_prompt
from vxl_jax.media.video import load_video, write_sample_video
from vxl_jax.serve.cache import VideoCache
from vxl_jax.serve.scheduler import GenRequest, RowSampling, Scheduler, VideoRef
from vxl_jax.text.prompt import chat_prompt, tokenizer_image_token

FRAMES = 25  # 2 complete windows (one scan call) and a partial one: both encoding paths
ROWS = 4
QUESTIONS = ["What happens?", "What colour is the square?", "Describe the video.", "Is there a dog?"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_videos")
    return [write_sample_video(str(d / "a.mp4"), num_frames=40, size=(64, 48)),
            write_sample_video(str(d / "b.mp4"), num_frames=60, size=(96, 64))]


@pytest.fixture(scope="module")
def sched(demo_vx, tmp_path_factory):
    cache = VideoCache(max_bytes=1 << 24, spill_dir=str(tmp_path_factory.mktemp("serve_cache")))
    s = Scheduler(demo_vx, max_rows=ROWS, max_queue=16, cache=cache, default_frames=FRAMES)
    s.start()
    yield s
    s.stop(grace_s=0)


@pytest.fixture(scope="module")
def frames(demo_vx, videos):
    return [load_video(v, FRAMES, size=demo_vx.cfg.vision.image_size)[0] for v in videos]


def prompt_ids(vx, question, video=True):
    return tokenizer_image_token(chat_prompt(question, with_video=video), vx.tokenizer)


def request(vx, rid, question, video_path=None, timeout_s=None, num_frames=None, **sampling):
    ids = prompt_ids(vx, question, video_path is not None)
    prefix, suffix = split_prompt(ids)
    video = VideoRef(video_path, num_frames=num_frames) if video_path is not None else None
    return GenRequest(rid, prefix, video, suffix if suffix is not None else np.zeros(0, np.int32),
                      RowSampling(**{"max_tokens": 12, **sampling}), timeout_s=timeout_s)


def reference(vx, question, frames, max_tokens=12, **kw):
    return vx.generate(prompt_ids(vx, question, frames is not None), frames, ratio=8, max_new_tokens=max_tokens,
                       **kw).tolist()


def test_greedy_request_equals_generate(demo_vx, sched, videos, frames):
    before = sched.snapshot()
    stream = sched.submit(request(demo_vx, "g", QUESTIONS[0], videos[0], max_tokens=20))

    async def collect():
        return [d async for d in stream]

    deltas = asyncio.run(collect())
    ids = [i for d in deltas for i in d.token_ids]
    assert ids == reference(demo_vx, QUESTIONS[0], frames[0], 20)
    assert all(d.finish_reason is None for d in deltas[:-1]) and deltas[-1].finish_reason in ("stop", "length")
    assert "".join(d.text for d in deltas) == demo_vx.tokenizer.decode(ids, skip_special_tokens=True)
    usage = deltas[-1].usage
    assert usage["completion_tokens"] == len(ids) and usage["cached_tokens"] == 0
    assert usage["prompt_tokens"] > FRAMES * 144 // 8  # the kept beacons count
    after = sched.snapshot()
    assert after["encodes"] == before["encodes"] + 1 and after["active_rows"] == 0
    assert stream.ttft_s is not None and len(stream.token_times) == len(ids)


def test_second_request_on_a_video_is_not_encoded_again(demo_vx, sched, videos, frames):
    sched.submit(request(demo_vx, "w", QUESTIONS[1], videos[0])).result(timeout=300)  # cached by now, or encoded
    before = sched.snapshot()
    ids, _, last = sched.submit(request(demo_vx, "h", QUESTIONS[1], videos[0])).result(timeout=300)
    after = sched.snapshot()
    assert after["encodes"] == before["encodes"] and after["cache_hits"] == before["cache_hits"] + 1
    assert last.usage["cached_tokens"] > 0 and last.usage["cached_tokens"] < last.usage["prompt_tokens"]
    assert ids == reference(demo_vx, QUESTIONS[1], frames[0])


def test_concurrent_requests_equal_sequential_ones(demo_vx, sched, videos, frames):
    """8 requests over 2 videos (one uncached), 4 rows: rows join and leave between chunks, memories of two
    lengths, one sampled row among greedy ones; each answer is its own single call's."""
    sampled = dict(temperature=0.8, top_p=0.9, top_k=20, seed=5)
    jobs = [(QUESTIONS[i % 4], i % 2, 6 + 3 * i, sampled if i == 3 else {}) for i in range(8)]
    sched.submit(request(demo_vx, "warm", QUESTIONS[0], videos[0])).result(timeout=300)  # video a cached (alone too)
    before = sched.snapshot()
    streams = [sched.submit(request(demo_vx, f"c{i}", q, videos[v], max_tokens=n, **s))
               for i, (q, v, n, s) in enumerate(jobs)]
    got = [s.result(timeout=600)[0] for s in streams]
    after = sched.snapshot()
    for (q, v, n, s), ids in zip(jobs, got):
        kw = dict(do_sample=True, temperature=0.8, top_p=0.9, top_k=20, seed=5) if s else {}
        assert ids == reference(demo_vx, q, frames[v], n, **kw), (q, v, n, s)
    assert after["encodes"] - before["encodes"] <= 1  # video b once (video a is cached), however many asked at once
    assert after["active_rows"] == 0 and after["queue_depth"] == 0


def test_cancelled_row_frees_its_slot(demo_vx, sched):
    long = [sched.submit(request(demo_vx, f"l{i}", QUESTIONS[i], max_tokens=2000)) for i in range(ROWS)]
    firsts = [s.get(timeout=300) for s in long]  # every row is decoding
    assert all(d.finish_reason is None and d.token_ids for d in firsts)
    waiting = sched.submit(request(demo_vx, "next", QUESTIONS[1], max_tokens=8))
    late = sched.submit(request(demo_vx, "late", QUESTIONS[2], max_tokens=2000, timeout_s=0.5))
    assert sched.snapshot()["queue_depth"] == 2  # every row is taken
    long[0].cancel()
    ids, _, last = waiting.result(timeout=300)
    assert not long[1].ended  # served while the other long rows still decode
    assert late.result(timeout=300)[2].finish_reason == "timeout"  # in the queue or in a row: its deadline passed
    for s in long:
        s.cancel()
    assert all(s.result(timeout=300)[2].finish_reason == "cancelled" for s in long)
    assert sched.snapshot()["active_rows"] == 0
    assert ids == reference(demo_vx, QUESTIONS[1], None, 8)


def test_bad_video_fails_alone(demo_vx, sched, videos, frames, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    ids, text, last = sched.submit(request(demo_vx, "bad", QUESTIONS[0], str(bad))).result(timeout=300)
    assert last.finish_reason == "error" and not ids and text == ""
    assert "broken.mp4" in last.error and "\n" not in last.error
    ids, _, last = sched.submit(request(demo_vx, "ok", QUESTIONS[0], videos[0])).result(timeout=300)
    assert last.finish_reason in ("stop", "length") and ids == reference(demo_vx, QUESTIONS[0], frames[0])


def test_stop_string_cuts_the_answer(demo_vx, sched, videos, frames):
    full = reference(demo_vx, QUESTIONS[2], frames[1], 20)
    text = demo_vx.tokenizer.decode(full, skip_special_tokens=True)
    clean = [i for i in range(2, len(text) - 2) if text[i:i + 2].isascii() and text[i:i + 2].strip() == text[i:i + 2]]
    if not clean:
        pytest.skip(f"no plain two-character stop string in {text!r}")
    stop = text[clean[0]:clean[0] + 2]
    cut = text.index(stop)
    ids, got, last = sched.submit(request(demo_vx, "s", QUESTIONS[2], videos[1], max_tokens=20,
                                          stop=(stop,))).result(timeout=300)
    assert last.finish_reason == "stop" and got == text[:cut]
    assert ids == full[:len(ids)] and stop in demo_vx.tokenizer.decode(ids, skip_special_tokens=True)
    assert stop not in demo_vx.tokenizer.decode(ids[:-1], skip_special_tokens=True)


def test_per_row_settings_choose_as_static_ones():
    """The decode loop's per-row settings (RowParams, traced) pick exactly the token of each row's own static
    SamplingParams: greedy, penalized, and each warper, side by side in one batch."""
    import jax
    import jax.numpy as jnp

    from vxl_jax.infer.sampling import RowParams, SamplingParams, choose_jax, choose_row_jax, seen_mask

    params = [SamplingParams(), SamplingParams(repetition_penalty=1.3), SamplingParams(do_sample=True),
              SamplingParams(do_sample=True, temperature=0.7, top_k=20, top_p=0.8),
              SamplingParams(do_sample=True, temperature=1.3, top_p=0.5), SamplingParams(do_sample=True, top_k=5),
              SamplingParams(do_sample=True, temperature=0.6, top_p=0.95, repetition_penalty=1.4)]
    rng, V, B = np.random.default_rng(0), 300, len(params)
    rows = jax.tree.map(jnp.asarray, RowParams.of(params))
    ours = jax.jit(jax.vmap(lambda lg, sn, rp, k: choose_row_jax(lg, sn, rp, k, True)))
    static = [jax.jit(lambda lg, sn, k, p=p: choose_jax(lg[None], sn[None], p, k)[0]) for p in params]
    for trial in range(8):
        logits = jnp.asarray((rng.normal(size=(B, V)) * 3).astype(np.float32))
        seen = jnp.stack([seen_mask(rng.integers(0, V, 20), V) for _ in range(B)])
        keys = jax.random.split(jax.random.PRNGKey(trial), B)
        want = [int(f(logits[b], seen[b], keys[b])) for b, f in enumerate(static)]
        assert np.asarray(ours(logits, seen, rows, keys)).tolist() == want


def test_encoding_interleaves_with_decoding(demo_vx, sched, tmp_path, monkeypatch):
    """A new video is encoded one window-scan call per turn: a row already decoding gets a decode chunk between
    any two of them."""
    engine, calls = demo_vx.core.engine, []
    for name in ("windows", "decode"):
        original = getattr(engine, name)
        monkeypatch.setattr(engine, name, lambda *a, _f=original, _n=name, **k: (calls.append(_n), _f(*a, **k))[1])
    running = sched.submit(request(demo_vx, "bg", QUESTIONS[0], max_tokens=2000))
    assert running.get(timeout=300).finish_reason is None
    path = write_sample_video(str(tmp_path / "c.mp4"), num_frames=50, size=(64, 48))
    ids, _, last = sched.submit(request(demo_vx, "new", QUESTIONS[3], path, num_frames=35)).result(timeout=300)
    assert not running.ended
    running.cancel()
    running.result(timeout=300)
    scans = [i for i, c in enumerate(calls) if c == "windows"]
    assert len(scans) == 3  # 3 complete windows in 2 calls (2 + 1), then the partial one
    assert all("decode" in calls[a + 1:b] for a, b in zip(scans, scans[1:])), calls
    monkeypatch.undo()
    frames = load_video(path, 35, size=demo_vx.cfg.vision.image_size)[0]
    assert ids == reference(demo_vx, QUESTIONS[3], frames)


def test_cache_spills_to_memory_files(demo_vx, frames, tmp_path):
    """Entries pushed out of the in-memory LRU are written as memory files (atomically: no temporary is left) and
    read back, by this cache or a new one over the same folder; another model's fingerprint never reads them."""
    from vxl_jax.serve.cache import memory_bytes

    s = demo_vx.session(prompt_ids(demo_vx, QUESTIONS[0])[:5], ratio=8)
    s.add_frames(frames[0][:10])
    vm = s.video_memory()
    cache = VideoCache(max_bytes=memory_bytes(vm) * 3 // 2, spill_dir=str(tmp_path))
    cache.bind(demo_vx.cfg, demo_vx.core.dtype, demo_vx.fingerprint())
    cache.put("k1", vm)
    assert cache.stats()["cache_entries"] == 1 and not list(tmp_path.iterdir())
    cache.put("k2", vm)  # pushes k1 out: spilled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1.mem"]
    cache.flush()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1.mem", "k2.mem"]
    cold = VideoCache(spill_dir=str(tmp_path))
    cold.bind(demo_vx.cfg, demo_vx.core.dtype, demo_vx.fingerprint())
    back = cold.get("k1")
    n = int(np.asarray(vm.kv.length)[0])
    np.testing.assert_array_equal(np.asarray(back.kv.k[:, :, :n]), np.asarray(vm.kv.k[:, :, :n]))
    assert back.prompt_ids.tolist() == vm.prompt_ids.tolist() and back.frames == vm.frames
    assert cold.stats()["cache_disk_hits"] == 1 and cold.get("absent") is None
    other = VideoCache(spill_dir=str(tmp_path))
    other.bind(demo_vx.cfg, demo_vx.core.dtype, "0" * 32)
    assert other.get("k2") is None and cold.stats()["cache_misses"] == 1


def test_stop_cancels_what_is_left_and_refuses_new_requests(demo_vx, sched):
    from vxl_jax.serve.scheduler import QueueFull, SchedulerClosed

    own = Scheduler(demo_vx, max_rows=1, max_queue=1)
    own.start()
    running = own.submit(request(demo_vx, "r", QUESTIONS[0], max_tokens=2000))
    assert running.get(timeout=300).finish_reason is None  # in the one row
    queued = own.submit(request(demo_vx, "q", QUESTIONS[1]))
    with pytest.raises(QueueFull):
        own.submit(request(demo_vx, "x", QUESTIONS[2]))
    own.stop(grace_s=0.2)
    assert running.result(timeout=5)[2].finish_reason == "cancelled"
    assert queued.result(timeout=5)[2].finish_reason == "cancelled"
    with pytest.raises(SchedulerClosed):
        own.submit(request(demo_vx, "y", QUESTIONS[2]))
    assert not own._thread.is_alive()
