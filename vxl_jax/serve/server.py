"""Running the app with uvicorn: in the foreground (``python -m vxl_jax.serve``) or on a background thread
(tests, benchmarks, embedding).

    server = BackgroundServer(app)          # 127.0.0.1, a free port
    server.start(); server.url              # "http://127.0.0.1:43521"
    server.stop()                           # graceful: in-flight requests get the grace period

The listening socket is bound here (port 0: a free port, known before serving); uvicorn stops accepting on
SIGTERM / Ctrl-C (foreground only), lets in-flight requests finish for ``grace_s`` seconds, cancels the rest,
then runs the app's shutdown (the scheduler stops).
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one. ``OSError`` if it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app, grace_s: float, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn server for ``app``: its own access log off (the app logs one line per request), graceful
    shutdown bounded by ``grace_s``."""
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=max(1, int(round(grace_s))), timeout_keep_alive=5)
    return uvicorn.Server(config)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class BackgroundServer:
    """The app served by uvicorn on a daemon thread (no signal handling: ``stop()`` ends it)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, grace_s: float = 5.0):
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = uvicorn_server(app, grace_s)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                        name="vxl-serve")

    def start(self, timeout: float = 120.0) -> "BackgroundServer":
        """Serve, and return once the app has started (its startup ran: the scheduler is running)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server stopped while starting (see its log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self.sock.close()
