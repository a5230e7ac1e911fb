"""python -m vxl_jax.serve [--model DIR] [--host 127.0.0.1] [--port 8000] [--media-root DIR] [--api-key KEY]

An OpenAI-compatible server for video questions (``POST /v1/chat/completions`` with ``video_url`` parts,
streaming, ``/v1/models``, ``/v1/files`` uploads, ``/health``, ``/metrics``). No --model: the embedded tiny
random model (pipeline demo, random answers). Binds to loopback unless --host says otherwise; the API key may
come from $VXL_API_KEY. SIGTERM / Ctrl-C: stop accepting, let in-flight answers finish for --grace seconds,
cancel the rest, exit 0. Bad flags: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from vxl_jax.convert.errors import ConversionError
from vxl_jax.infer.api import VideoXL
from vxl_jax.infer.demo import default_model
from vxl_jax.runtime.cli_args import OneLineParser
from vxl_jax.runtime.compile_cache import default_cache_dir, enable_compilation_cache
from vxl_jax.serve.app import Settings, create_app
from vxl_jax.serve.cache import VideoCache
from vxl_jax.serve.scheduler import Scheduler
from vxl_jax.serve.server import bind, uvicorn_server, url_of

log = logging.getLogger("vxl_jax.serve")
EMBEDDED_NAME = "vxl-tiny"
DEMO_FRAMES = 20  # as infer.py: the embedded random model's default run stays short
API_KEY_ENV = "VXL_API_KEY"


class UsageError(ValueError):
    """A bad flag: one line on stderr, exit code 2."""


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m vxl_jax.serve", description=__doc__.split("\n\n")[1].strip())
    p.add_argument("--model", help="converted checkpoint folder (convert_weights.py); default: the embedded tiny "
                                   "random model")
    p.add_argument("--served-model-name", default=None,
                   help="the model name clients send (default: the folder's name, or 'vxl-tiny')")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                        "only; 0.0.0.0 exposes the server to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: a free port)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"ask clients for 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_ENV}; none: no key)")
    p.add_argument("--media-root", default=None,
                   help="folder the server may read videos from (video_url: a path under it or a file:// URL); "
                        "default: none, only uploaded videos (POST /v1/files)")
    p.add_argument("--upload-dir", default=None, help="where uploaded videos are kept (default: a temporary folder)")
    p.add_argument("--max-upload-mb", type=float, default=2048.0, help="largest upload in MiB (default 2048)")
    p.add_argument("--max-uploads-gb", type=float, default=32.0,
                   help="all uploads together in GiB; past it the oldest are removed (default 32)")
    p.add_argument("--max-rows", type=int, default=8, help="decode rows held at once (default 8)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for a row before new ones get 429 (default 64)")
    p.add_argument("--cache-mb", type=float, default=1024.0,
                   help="in-memory cache of encoded videos, MiB (default 1024; 0: no cache)")
    p.add_argument("--cache-dir", default=None,
                   help="spill encoded videos pushed out of memory to this folder as memory files (default: none)")
    p.add_argument("--cache-disk-mb", type=float, default=None,
                   help="largest size of --cache-dir in MiB, oldest files removed first (default: no limit)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames sampled per video when a request gives neither frames nor fps (default 128; 20 "
                        "with the embedded model)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request time limit in seconds (default 600)")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds in-flight requests may take to finish after SIGTERM (default 10)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--mesh", default=None, metavar="AXIS=N[,AXIS=N]",
                   help="run sharded over several devices, as infer.py (e.g. tensor=4)")
    p.add_argument("--compile-cache", metavar="DIR", default=None,
                   help="persistent XLA compilation cache ('none' disables it; default as infer.py)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


def check_args(a: argparse.Namespace) -> None:
    for flag, value, low in (("--max-rows", a.max_rows, 1), ("--max-queue", a.max_queue, 1),
                             ("--port", a.port, 0), ("--frames", a.frames, 1)):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    for flag, value in (("--timeout", a.timeout), ("--grace", a.grace), ("--max-upload-mb", a.max_upload_mb),
                        ("--max-uploads-gb", a.max_uploads_gb)):
        if value <= 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    for flag, value in (("--cache-mb", a.cache_mb), ("--cache-disk-mb", a.cache_disk_mb)):
        if value is not None and value < 0:
            raise UsageError(f"{flag} must be >= 0, got {value}")
    if a.model is not None and not os.path.isdir(a.model):
        raise UsageError(f"--model {a.model} is not a folder")
    if a.media_root is not None and not os.path.isdir(a.media_root):
        raise UsageError(f"--media-root {a.media_root} is not a folder")
    if a.api_key is not None and not a.api_key.strip():
        a.api_key = None


def load_model(a: argparse.Namespace) -> VideoXL:
    enable_compilation_cache(default_cache_dir() if a.compile_cache is None else a.compile_cache)
    if a.model is None:
        log.warning("no --model given: serving the embedded tiny random model; answers are random tokens")
        return default_model(dtype=a.dtype, mesh=a.mesh)
    vx = VideoXL.load(a.model, dtype=a.dtype, mesh=a.mesh)
    if vx.tokenizer is None:
        raise UsageError(f"{a.model} has no tokenizer files; convert the checkpoint with its tokenizer")
    return vx


def build(a: argparse.Namespace):
    """-> (the app, its settings): the model loaded, the scheduler (not started: the app's startup does)."""
    vx = load_model(a)
    name = a.served_model_name or (os.path.basename(os.path.normpath(a.model)) if a.model else EMBEDDED_NAME)
    frames = a.frames or (DEMO_FRAMES if a.model is None else None)
    kwargs = {"default_frames": frames} if frames else {}
    scheduler = Scheduler(vx, max_rows=a.max_rows, max_queue=a.max_queue, cache=video_cache(a), **kwargs)
    settings = Settings(model_name=name, api_key=a.api_key, media_root=a.media_root, upload_dir=a.upload_dir,
                        max_upload_bytes=int(a.max_upload_mb * (1 << 20)),
                        max_uploads_bytes=int(a.max_uploads_gb * (1 << 30)), timeout_s=a.timeout, grace_s=a.grace)
    return create_app(vx, scheduler, settings), settings


def video_cache(a: argparse.Namespace) -> VideoCache:
    disk = None if a.cache_disk_mb is None else int(a.cache_disk_mb * (1 << 20))
    return VideoCache(max_bytes=int(a.cache_mb * (1 << 20)), spill_dir=a.cache_dir, max_disk_bytes=disk)


def main(argv=None) -> int:
    """Serve until SIGTERM / Ctrl-C -> 0; bad flags or a taken port -> one line on stderr and 2."""
    a = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)  # forced: importing jax has configured the root logger
    logging.getLogger("vxl_jax").setLevel(a.log_level.upper())  # our lines at --log-level, the libraries' warnings
    try:
        check_args(a)
        sock = bind(a.host, a.port)
        app, settings = build(a)
    except (UsageError, OSError, ValueError, ConversionError) as e:
        print(f"python -m vxl_jax.serve: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable from other machines%s", a.host,
                    "" if a.api_key else " and no --api-key is set")
    log.info("serving %s on %s (media root: %s)", settings.model_name, url_of(sock), a.media_root or "none")
    # uvicorn re-raises the signal it stopped on once it has shut down: a quiet handler lets main return 0.
    signal.signal(signal.SIGTERM, lambda *_: log.info("stopped (SIGTERM)"))
    uvicorn_server(app, a.grace, a.log_level if a.log_level != "info" else "warning").run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
