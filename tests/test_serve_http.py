"""The server over real HTTP (issue 19): one uvicorn server per module on 127.0.0.1 at a free port, the embedded
tiny model and the real scheduler, talked to with the official ``openai`` client and raw HTTP (httpx2).

- answers: non-stream and stream (SSE chunks ending with ``[DONE]``) equal ``vx.generate``'s greedy ids for the
  same prompt and frames (read as ``infer.py`` reads them); a multi-turn chat; an uploaded video; 8 concurrent
  requests over 2 videos equal the sequential answers; the README's openai client block runs as pasted;
- refusals, each with its status code and OpenAI's error body, the server serving on after them: 401, 403 (``..``,
  an absolute path outside, an escaping symlink, a file:// URL outside), 400 (bad JSON, empty messages, a bad or
  missing video, a remote URL, bad fields), 404 (unknown model), 413 (upload over the limit, with and without
  Content-Length), 429 with Retry-After and 503 (a stand-in scheduler), 504 (a per-request timeout);
- a client that disconnects mid-stream frees its row and the next request is served;
- SIGTERM during a stream: the stream finishes, the process exits 0 (``python -m vxl_jax.serve`` in a
  subprocess).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types

import httpx2 as httpx
import openai
import pytest

from tests.conftest import ROOT, xla_cache_dir
from vxl_jax.media.video import load_video, write_sample_video
from vxl_jax.serve.app import Settings, create_app
from vxl_jax.serve.chat import ApiError
from vxl_jax.serve.requests import QueueFull, SchedulerClosed
from vxl_jax.serve.scheduler import Scheduler
from vxl_jax.serve.server import BackgroundServer
from vxl_jax.serve.uploads import Uploads
from vxl_jax.text.constants import DEFAULT_SYSTEM
from vxl_jax.text.prompt import question_ids, tokenizer_image_token

MODEL, KEY = "vxl-tiny", "test-key"
FRAMES, RATIO, MAX_NEW = 4, 8, 12
UPLOAD_LIMIT = 1 << 20
QUESTION = "What happens in the video?"


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A media root with two clips, a broken file, a symlink inside and one escaping; a clip outside it."""
    base = tmp_path_factory.mktemp("serve")
    root, outside = base / "media", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    write_sample_video(root / "clip.mp4", num_frames=12, size=(160, 96))
    write_sample_video(root / "sub" / "other.mp4", num_frames=20, size=(96, 160))
    write_sample_video(outside / "secret.mp4", num_frames=12, size=(160, 96))
    (root / "broken.mp4").write_bytes(b"not a video" * 100)
    (root / "inside.mp4").symlink_to(root / "clip.mp4")
    (root / "escape.mp4").symlink_to(outside / "secret.mp4")
    return types.SimpleNamespace(root=root, outside=outside, base=base)


@pytest.fixture(scope="module")
def server(demo_vx, media):
    scheduler = Scheduler(demo_vx, max_rows=4, max_queue=32, default_frames=FRAMES)
    settings = Settings(MODEL, api_key=KEY, media_root=str(media.root), upload_dir=str(media.base / "uploads"),
                        max_upload_bytes=UPLOAD_LIMIT, timeout_s=120)
    srv = BackgroundServer(create_app(demo_vx, scheduler, settings)).start()
    yield types.SimpleNamespace(url=srv.url, scheduler=scheduler, vx=demo_vx)
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as h:
        yield h


def video_message(url: str, question: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def chat_body(url: str = "clip.mp4", question: str = QUESTION, **extra) -> dict:
    return {"model": MODEL, "messages": video_message(url, question), "max_tokens": MAX_NEW,
            "frames": FRAMES, "return_token_ids": True, **extra}


_REFS: dict = {}


def reference(vx, path, question: str = QUESTION, max_new: int = MAX_NEW, ids=None) -> list[int]:
    """``vx.generate``'s greedy ids for the question about ``FRAMES`` frames of ``path`` (as infer.py reads them)."""
    ids = question_ids(question, vx.tokenizer) if ids is None else ids
    key = (str(path), tuple(ids), max_new)
    if key not in _REFS:
        frames, _ = load_video(str(path), FRAMES, size=vx.cfg.vision.image_size)
        _REFS[key] = [int(i) for i in vx.generate(ids, frames, RATIO, max_new)]
    return _REFS[key]


def extra(obj, name):
    return (obj.model_extra or {}).get(name)


def sse_payloads(lines) -> list:
    """The ``data:`` payloads of an SSE response, JSON decoded (``[DONE]`` kept as the string)."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assert_error(r, status: int, code: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"] and "\n" not in err["message"]
    if code is not None:
        assert err["code"] == code, err


# ---------------------------------------------------------------------------- answers


def test_models_and_health(client, http):
    assert [m.id for m in client.models.list()] == [MODEL]
    r = http.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_answer_equals_generate(server, client, media):
    r = client.chat.completions.create(model=MODEL, messages=video_message("clip.mp4"), max_tokens=MAX_NEW,
                                       extra_body={"frames": FRAMES, "return_token_ids": True})
    want = reference(server.vx, media.root / "clip.mp4")
    choice = r.choices[0]
    assert extra(choice, "token_ids") == want
    assert choice.finish_reason == ("length" if len(want) == MAX_NEW else "stop")
    assert r.usage.completion_tokens == len(want) and r.usage.prompt_tokens > len(question_ids(QUESTION,
                                                                                                server.vx.tokenizer))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)


def test_stream_equals_generate(server, client, http, media):
    want = reference(server.vx, media.root / "clip.mp4")
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=video_message("file://" + str(media.root / "clip.mp4")), max_tokens=MAX_NEW,
        stream=True, stream_options={"include_usage": True}, extra_body={"frames": FRAMES, "return_token_ids": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    ids = [i for c in chunks if c.choices for i in (extra(c.choices[0], "token_ids") or [])]
    assert ids == want
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [("length" if len(want) == MAX_NEW else "stop")]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = http.post("/v1/chat/completions", json=chat_body()).json()
    assert text == plain["choices"][0]["message"]["content"]
    with http.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as r:  # the raw SSE framing
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        payloads = sse_payloads(r.iter_lines())
    assert payloads[-1] == "[DONE]" and all(p["object"] == "chat.completion.chunk" for p in payloads[:-1])


def test_multi_turn_chat(server, client, media):
    """A second turn: the earlier answer and the new question follow the video in the prompt; the video's memory
    (system prompt + video) comes from the cache the first turn filled."""
    first = "What is moving?"
    ask = lambda messages: client.chat.completions.create(  # noqa: E731
        model=MODEL, messages=messages, max_tokens=MAX_NEW, extra_body={"frames": FRAMES, "return_token_ids": True})
    turn1 = ask(video_message("clip.mp4", first))
    assert extra(turn1.choices[0], "token_ids") == reference(server.vx, media.root / "clip.mp4", first)
    answer = turn1.choices[0].message.content
    messages = [{"role": "system", "content": DEFAULT_SYSTEM}, *video_message("clip.mp4", first),
                {"role": "assistant", "content": answer}, {"role": "user", "content": QUESTION}]
    prompt = (f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n<image>\n{first}<|im_end|>\n"
              f"<|im_start|>assistant\n{answer}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n"
              f"<|im_start|>assistant\n")
    want = reference(server.vx, media.root / "clip.mp4", ids=tokenizer_image_token(prompt, server.vx.tokenizer))
    turn2 = ask(messages)
    assert extra(turn2.choices[0], "token_ids") == want
    assert turn2.usage.prompt_tokens_details.cached_tokens > 0


def test_upload_then_ask(server, client, media):
    data = (media.root / "clip.mp4").read_bytes()
    f = client.files.create(file=("clip.mp4", data, "video/mp4"), purpose="user_data")
    assert f.id.startswith("file-") and f.bytes == len(data)
    r = client.chat.completions.create(model=MODEL, messages=video_message(f.id), max_tokens=MAX_NEW,
                                       extra_body={"frames": FRAMES, "return_token_ids": True})
    assert extra(r.choices[0], "token_ids") == reference(server.vx, media.root / "clip.mp4")


def test_concurrent_equals_sequential(server, media):
    """8 requests at once over 2 videos (different questions) answer as each alone."""
    jobs = [(video, f"Question {i}: what do you see?") for i in range(4) for video in ("clip.mp4", "sub/other.mp4")]
    want = [reference(server.vx, media.root / v, q) for v, q in jobs]

    async def ask_all():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300) as c:
            return await asyncio.gather(*[c.chat.completions.create(
                model=MODEL, messages=video_message(v, q), max_tokens=MAX_NEW,
                extra_body={"frames": FRAMES, "return_token_ids": True}) for v, q in jobs])

    got = [extra(r.choices[0], "token_ids") for r in asyncio.run(ask_all())]
    assert got == want


def test_readme_client_example_runs(server, http, media, capsys, monkeypatch):
    """The README's openai client block, as pasted but for the server's address, key, model name, video and
    frame count: it prints the streamed answer, the same text as the plain answer to that request."""
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "from openai import OpenAI" in b)
    for old, new in (("http://127.0.0.1:8000", server.url), ('api_key="unused"', f'api_key="{KEY}"'),
                     ('"videoxl-jax"', f'"{MODEL}"'), ('"frames": 128', f'"frames": {FRAMES}')):
        assert old in block, old
        block = block.replace(old, new)
    monkeypatch.chdir(media.root)
    exec(compile(block.replace('"cat.mp4"', '"clip.mp4"'), "README.md (server client)", "exec"), {})
    body = {**chat_body(question="What happens in this video?", max_tokens=64), "return_token_ids": False}
    assert capsys.readouterr().out == http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"][
        "content"]


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("url", ["../outside/secret.mp4", "sub/../../outside/secret.mp4", "escape.mp4", "ABS",
                                 "FILE_URL"])
def test_paths_outside_the_media_root_are_forbidden(http, media, url):
    url = {"ABS": str(media.outside / "secret.mp4"), "FILE_URL": "file://" + str(media.outside / "secret.mp4")
           }.get(url, url)
    assert_error(http.post("/v1/chat/completions", json=chat_body(url)), 403, "forbidden_path")


def test_api_key(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(server.url + "/v1/chat/completions", json=chat_body(), headers=headers)
        assert_error(r, 401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(server.url + "/health").status_code == 200  # no key for health checks


BAD_BODIES = {
    "bad json": b'{"model": "vxl-tiny", "messages": [',
    "not an object": b"[1, 2]",
    "empty messages": {"model": MODEL, "messages": []},
    "no messages": {"model": MODEL},
    "missing video": chat_body("nowhere.mp4"),
    "remote video": chat_body("https://example.com/a.mp4"),
    "two videos": {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "clip.mp4"}}, {"type": "video_url", "video_url": {"url": "clip.mp4"}},
        {"type": "text", "text": "q"}]}]},
    "placeholder in text": chat_body(question="<image> what?"),
    "image part": {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
    "last is assistant": {"model": MODEL, "messages": [{"role": "assistant", "content": "hi"}]},
    "top_p": chat_body(top_p=1.5),
    "temperature": chat_body(temperature=-1),
    "max_tokens": chat_body(max_tokens=0),
    "ratio": chat_body(ratio=7),
    "frames and fps": chat_body(fps=1.0),
    "n": chat_body(n=2),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_requests(http, name):
    body = BAD_BODIES[name]
    r = http.post("/v1/chat/completions", content=body if isinstance(body, bytes) else json.dumps(body),
                  headers={"Content-Type": "application/json"})
    assert_error(r, 400)


def test_unreadable_video_then_serving_on(server, http, media):
    """A video that cannot be decoded is a 400 (also when streaming); the next request is answered."""
    assert_error(http.post("/v1/chat/completions", json=chat_body("broken.mp4")), 400)
    assert_error(http.post("/v1/chat/completions", json=chat_body("broken.mp4", stream=True)), 400)
    r = http.post("/v1/chat/completions", json=chat_body("inside.mp4"))  # a symlink inside the root is fine
    assert r.status_code == 200 and r.json()["choices"][0]["token_ids"] == reference(server.vx,
                                                                                      media.root / "clip.mp4")


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=video_message("clip.mp4"))
    assert e.value.body["code"] == "model_not_found"


def test_upload_limits(http, media):
    over = b"\0" * (UPLOAD_LIMIT + 1)
    assert_error(http.post("/v1/files", files={"file": ("big.mp4", over, "video/mp4")}), 413, "file_too_large")
    boundary = "vxlboundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n\r\n'.encode(),
             over, f"\r\n--{boundary}--\r\n".encode()]
    r = http.post("/v1/files", content=iter(parts), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "file_too_large")
    assert_error(http.post("/v1/files", content=b"raw", headers={"Content-Type": "video/mp4"}), 400)
    huge = json.dumps(chat_body(question="x" * (9 << 20)))
    assert_error(http.post("/v1/chat/completions", content=huge, headers={"Content-Type": "application/json"}), 413)
    assert not [n for n in os.listdir(media.base / "uploads") if n.endswith(".tmp")]  # nothing half-written left


def test_uploads_over_the_total_remove_the_oldest(tmp_path):
    uploads = Uploads(str(tmp_path), max_bytes=100, max_total_bytes=150)

    async def save(data: bytes) -> str:
        async def body():
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="v.mp4"\r\n\r\n'
            yield data
            yield b"\r\n--b--\r\n"
        return (await uploads.save(body(), "multipart/form-data; boundary=b"))["id"]

    ids = [asyncio.run(save(bytes([i]) * 60)) for i in range(3)]
    with pytest.raises(ApiError):
        uploads.path(ids[0])
    assert [open(uploads.path(i), "rb").read() for i in ids[1:]] == [b"\1" * 60, b"\2" * 60]
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(uploads.path(i)) for i in ids[1:])


def test_request_timeout(http):
    r = http.post("/v1/chat/completions", json=chat_body("sub/other.mp4", timeout=0.001, max_tokens=200))
    assert_error(r, 504)


class _Refusing:
    """A stand-in scheduler whose queue is always full (or which is stopping)."""

    def __init__(self, error):
        self.error = error

    def start(self):
        pass

    def stop(self, grace_s=0.0):
        pass

    def snapshot(self):
        return {"queue_depth": 64, "active_rows": 8, "max_rows": 8}

    def submit(self, req):
        raise self.error


@pytest.mark.parametrize("error,status", [(QueueFull(), 429), (SchedulerClosed(), 503)])
def test_queue_full_and_stopping(demo_vx, media, error, status):
    app = create_app(demo_vx, _Refusing(error), Settings(MODEL, media_root=str(media.root), retry_after_s=3))
    srv = BackgroundServer(app).start()
    try:
        r = httpx.post(srv.url + "/v1/chat/completions", json=chat_body())
        assert_error(r, status)
        if status == 429:
            assert r.headers["retry-after"] == "3"
            assert "vxl_queue_depth 64.0" in httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()


# ---------------------------------------------------------------------------- disconnects, metrics, SIGTERM


def _wait(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_disconnect_frees_the_row(server, http, media, caplog):
    long = 400
    caplog.set_level(logging.INFO, "vxl_jax.serve")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as h:
        with h.stream("POST", "/v1/chat/completions", json=chat_body(max_tokens=long, stream=True)) as r:
            request_id = r.headers["x-request-id"]
            lines = r.iter_lines()
            assert sse_payloads([next(lines)])[0]["choices"][0]["delta"]["role"] == "assistant"
    assert _wait(lambda: server.scheduler.snapshot()["active_rows"] == 0)
    line = next(rec.getMessage() for rec in caplog.records if request_id in rec.getMessage())
    assert "disconnected=True" in line
    assert int(re.search(r"tokens=(\d+)", line)[1]) < long
    r = http.post("/v1/chat/completions", json=chat_body())
    assert r.json()["choices"][0]["token_ids"] == reference(server.vx, media.root / "clip.mp4")


def test_metrics(server, http):
    text = http.get("/metrics").text
    for name in ("vxl_queue_depth", "vxl_active_rows", "vxl_max_rows", "vxl_tokens_generated_total",
                 "vxl_time_to_first_token_seconds_bucket", "vxl_time_per_output_token_seconds_count",
                 'vxl_requests_total{status="200"}', 'vxl_requests_total{status="400"}'):
        assert name in text, name
    assert re.search(r"^vxl_time_to_first_token_seconds_count [1-9]", text, re.M)


def test_sigterm_during_a_stream_exits_cleanly(media):
    """``python -m vxl_jax.serve``: SIGTERM while a stream runs -> the stream still ends with [DONE], exit 0."""
    cmd = [sys.executable, "-m", "vxl_jax.serve", "--port", "0", "--media-root", str(media.root), "--frames",
           str(FRAMES), "--grace", "30", "--compile-cache", xla_cache_dir()]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "VXL_API_KEY": ""})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        assert _wait(lambda: any(" on http://" in ln for ln in lines) or proc.poll() is not None, 300), lines
        url = re.search(r" on (http://\S+)", "".join(lines))[1]
        with httpx.stream("POST", url + "/v1/chat/completions", json=chat_body(max_tokens=48, stream=True),
                          timeout=120) as r:
            it = r.iter_lines()
            first = next(it)
            proc.send_signal(signal.SIGTERM)
            payloads = sse_payloads([first, *it])
        assert payloads[-1] == "[DONE]"
        finish = [p["choices"][0]["finish_reason"] for p in payloads[:-1] if p["choices"][0]["finish_reason"]]
        assert finish in (["length"], ["stop"]), payloads[-3:]  # finished within the grace period, not cut off
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    assert not [ln for ln in lines if "Traceback" in ln], "".join(lines)
    assert any("stopped (SIGTERM)" in ln for ln in lines), "".join(lines)
