"""Uploaded videos (``POST /v1/files``, multipart like OpenAI's files API): streamed to disk, size-limited.

    uploads = Uploads(folder, max_bytes=2 << 30)
    info = await uploads.save(request.stream(), request.headers["content-type"])   # {"id": "file-…", "bytes": …}
    path = uploads.path(info["id"])          # what a video_url of that id reads

The multipart body is parsed as it arrives (python-multipart's streaming parser); the ``file`` part goes to a
temporary file in the folder, renamed into place when complete (a failed or refused upload leaves nothing). Over
``max_bytes`` -> 413 at once, without reading the rest.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from vxl_jax.serve.chat import ApiError, bad_request

ID = re.compile(r"file-[0-9a-f]{24}")
EXT = re.compile(r"\.[A-Za-z0-9]{1,8}")


class Uploads:
    """The folder of uploaded videos (``{id}{ext}`` files), the size limit of one upload and of them all (bytes):
    past ``max_total_bytes`` the oldest uploads are removed (their ids then answer 400)."""

    def __init__(self, folder: str, max_bytes: int, max_total_bytes: int | None = None):
        os.makedirs(folder, exist_ok=True)
        self.folder, self.max_bytes = folder, int(max_bytes)
        self.max_total_bytes = None if max_total_bytes is None else int(max_total_bytes)
        self._paths: dict[str, str] = {}  # id -> path, oldest first
        names = [n for n in os.listdir(folder) if ID.fullmatch(os.path.splitext(n)[0]) and not n.endswith(".tmp")]
        for name in sorted(names, key=lambda n: os.path.getmtime(os.path.join(folder, n))):  # an earlier run's
            self._paths[os.path.splitext(name)[0]] = os.path.join(folder, name)

    def is_id(self, url: str) -> bool:
        return bool(ID.fullmatch(url))

    def path(self, file_id: str) -> str:
        if file_id not in self._paths or not os.path.isfile(self._paths[file_id]):
            raise bad_request(f"no uploaded video with id {file_id!r}", "messages")
        return self._paths[file_id]

    async def save(self, body: AsyncIterator[bytes], content_type: str | None) -> dict:
        """A multipart body with a ``file`` part -> OpenAI's file object (id, bytes, filename, created_at);
        400 for a body that is not multipart or has no file part, 413 over the limit."""
        kind, options = parse_options_header(content_type)
        if kind != b"multipart/form-data" or b"boundary" not in options:
            raise bad_request("upload a video as multipart/form-data with a 'file' part", "file")
        sink = _FileSink(self.folder, self.max_bytes)
        try:
            parser = MultipartParser(options[b"boundary"], sink.callbacks())
            async for chunk in body:
                parser.write(chunk)
                sink.check()
            parser.finalize()
            sink.check()
            file_id = "file-" + secrets.token_hex(12)
            path = os.path.join(self.folder, file_id + sink.ext)
            os.replace(sink.finish(), path)  # atomic: the id names a complete file or none
        except FormParserError as e:
            raise bad_request(f"malformed multipart upload: {e}", "file") from None
        finally:
            sink.discard()
        self._paths[file_id] = path
        self._trim()
        return {"id": file_id, "object": "file", "bytes": sink.size, "created_at": int(time.time()),
                "filename": sink.filename, "purpose": "user_data"}


    def _trim(self) -> None:
        """Remove the oldest uploads while all of them are over ``max_total_bytes`` (the newest always stays)."""
        if self.max_total_bytes is None:
            return
        sizes = {k: os.path.getsize(p) if os.path.isfile(p) else 0 for k, p in self._paths.items()}
        total = sum(sizes.values())
        for file_id in list(self._paths)[:-1]:
            if total <= self.max_total_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._paths.pop(file_id))
            total -= sizes[file_id]


class _FileSink:
    """Writes the ``file`` part of a multipart body to a temporary file, counting its bytes."""

    def __init__(self, folder: str, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.size, self.filename, self.ext = 0, "", ""
        self.tmp: str | None = None
        self._out = None
        self._headers: dict[bytes, bytes] = {}
        self._field: list[bytes] = []
        self._value: list[bytes] = []
        self._in_file = self._done = False

    def callbacks(self) -> dict:
        return {"on_part_begin": self._headers.clear, "on_header_field": self._add(self._field),
                "on_header_value": self._add(self._value), "on_header_end": self._header,
                "on_headers_finished": self._begin, "on_part_data": self._data, "on_part_end": self._end}

    @staticmethod
    def _add(into: list):
        return lambda data, start, end: into.append(data[start:end])

    def _header(self) -> None:
        self._headers[b"".join(self._field).lower()] = b"".join(self._value).strip()
        self._field.clear()
        self._value.clear()

    def _begin(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition"))
        self._in_file = opts.get(b"name") == b"file" and not self._done
        if self._in_file:
            self.filename = os.path.basename(opts.get(b"filename", b"").decode("utf-8", "replace"))
            ext = os.path.splitext(self.filename)[1]
            self.ext = ext.lower() if EXT.fullmatch(ext) else ""
            self.tmp = os.path.join(self.folder, f".upload-{secrets.token_hex(8)}.tmp")
            self._out = open(self.tmp, "wb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file and self.size <= self.max_bytes:
            self.size += end - start
            if self.size <= self.max_bytes:
                self._out.write(data[start:end])

    def _end(self) -> None:
        if self._in_file:
            self._out.close()
            self._in_file, self._done = False, True

    def check(self) -> None:
        if self.size > self.max_bytes:
            raise ApiError(413, f"the upload is over the server's limit of {self.max_bytes} bytes",
                           code="file_too_large", param="file")

    def finish(self) -> str:
        if not self._done:
            raise bad_request("the upload has no complete 'file' part", "file")
        tmp, self.tmp = self.tmp, None
        return tmp

    def discard(self) -> None:
        if self._out is not None and not self._out.closed:
            self._out.close()
        if self.tmp is not None and os.path.exists(self.tmp):
            os.remove(self.tmp)
