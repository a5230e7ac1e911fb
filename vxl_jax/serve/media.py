"""Which file a ``video_url`` names, and whether the server may read it.

    media = MediaRoot("/data/videos", uploads)       # root None: only uploaded videos
    path = media.resolve("clips/a.mp4")              # or "file:///data/videos/clips/a.mp4", or "file-<24 hex>"

A local path is read only from under ``--media-root``: it is resolved with every symlink and ``..`` followed
(``os.path.realpath``) and must still be inside the root's own resolved path, else 403. Without a media root the
server reads no local path at all (403), only uploaded videos (``POST /v1/files``, :mod:`vxl_jax.serve.uploads`).
Remote URLs are never fetched (the server makes no network requests): 400.
"""

from __future__ import annotations

import os
import urllib.parse

from vxl_jax.serve.chat import ApiError, bad_request
from vxl_jax.serve.uploads import Uploads


class MediaRoot:
    """The media root (None: no local paths) and the uploaded videos."""

    def __init__(self, root: str | None, uploads: Uploads):
        self.root = None if root is None else os.path.realpath(root)
        if self.root is not None and not os.path.isdir(self.root):
            raise ValueError(f"--media-root {root} is not a directory")
        self.uploads = uploads

    def resolve(self, url: str) -> str:
        """A video_url -> the real path of an existing regular file; ``ApiError`` 403 (outside the media root,
        or no media root) or 400 (a remote URL, a missing file, an unknown upload id)."""
        if self.uploads.is_id(url):
            return self.uploads.path(url)
        path = _local_path(url)
        if self.root is None:
            raise ApiError(403, "this server reads no local video paths (it was started without --media-root); "
                                "upload the video (POST /v1/files) and send its id as the video_url",
                           "permission_error", "forbidden_path", "messages")
        real = os.path.realpath(os.path.join(self.root, path))  # an absolute path replaces the root
        if os.path.commonpath([real, self.root]) != self.root:
            raise ApiError(403, f"video path {url!r} is outside the server's media root", "permission_error",
                           "forbidden_path", "messages")
        if not os.path.isfile(real):
            raise bad_request(f"video not found: {url!r}", "messages")
        return real


def _local_path(url: str) -> str:
    """The path a ``file://`` URL or a plain path names; 400 for any other scheme or an empty path."""
    if url.startswith("file://"):
        parsed = urllib.parse.urlsplit(url)
        if parsed.netloc not in ("", "localhost"):
            raise bad_request(f"file URL {url!r} names another host; only local files are read", "messages")
        path = urllib.parse.unquote(parsed.path)
    elif "://" in url or url.startswith("data:"):
        raise bad_request("only file:// URLs, paths under the media root and uploaded video ids are read "
                          "(this server fetches nothing over the network): upload the video to /v1/files",
                          "messages")
    else:
        path = url
    if not path or "\x00" in path:
        raise bad_request(f"bad video path {url!r}", "messages")
    return path
