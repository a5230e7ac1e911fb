"""The encoded-video cache: a video's compressed memory (``[prefix || beacons]``), kept so the next question about
it is answered without encoding it again.

Key (:func:`video_key`): the content hash of the file (:func:`file_digest`, not its name: a renamed copy hits, an
edited file misses), the frame sampling (count or fps), the ratio, the text before the video (the beacons attend
to it) and the model's fingerprint. Entries live in an LRU bounded in bytes of K/V; with ``spill_dir`` an entry
pushed out is written there as a memory file (``vxl_jax.infer.memory_file``, written atomically) and read back
on a later miss; ``flush`` writes every entry (at shutdown). The cache is used from the
scheduler's model thread only (its entries are device arrays); ``stats`` may be read from any thread.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import threading

import numpy as np

from vxl_jax.beacon.memory import take_rows
from vxl_jax.infer import memory_file
from vxl_jax.infer.core import capacity
from vxl_jax.infer.results import VideoMemory

log = logging.getLogger(__name__)
HASH_BLOCK = 1 << 20
_digests: dict = {}  # (real path, size, mtime_ns, inode) -> digest: a file is read once while it is unchanged
_digests_lock = threading.Lock()


def file_digest(path: str) -> str:
    """BLAKE2b-128 of the file's bytes (hex), remembered while its size, mtime and inode stay the same."""
    st = os.stat(path)
    memo = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _digests_lock:
        if memo in _digests:
            return _digests[memo]
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            h.update(block)
    with _digests_lock:
        _digests[memo] = h.hexdigest()
    return _digests[memo]


def video_key(digest: str, num_frames: int | None, fps: float | None, ratio: int, prefix_ids, fingerprint: str) -> str:
    """The cache key (hex) of one video's memory."""
    facts = {"video": digest, "frames": num_frames, "fps": fps, "ratio": int(ratio),
             "prefix": [int(i) for i in np.asarray(prefix_ids).reshape(-1)], "model": fingerprint}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def memory_bytes(vm: VideoMemory) -> int:
    return int(vm.kv.k.nbytes + vm.kv.v.nbytes)


def compact(vm: VideoMemory) -> VideoMemory:
    """A copy of ``vm`` whose buffer holds its filled slots plus one text bucket (what the cache keeps)."""
    length = int(np.asarray(vm.kv.length)[0])
    return VideoMemory(take_rows(vm.kv, [0], capacity(length)), vm.prompt_ids, vm.frames, vm.visual_tokens)


class VideoCache:
    """LRU of :class:`VideoMemory` by key, at most ``max_bytes`` of K/V on the device; ``spill_dir``: memory files of
    entries pushed out (at most ``max_disk_bytes`` there, oldest removed first; None: no limit)."""

    def __init__(self, max_bytes: int = 1 << 30, spill_dir: str | None = None, max_disk_bytes: int | None = None):
        if max_bytes < 0 or (max_disk_bytes is not None and max_disk_bytes < 0):
            raise ValueError("cache sizes must be >= 0 bytes")
        self.max_bytes, self.max_disk_bytes = int(max_bytes), max_disk_bytes
        self.spill_dir = None if spill_dir is None else os.path.abspath(spill_dir)
        if self.spill_dir is not None:
            os.makedirs(self.spill_dir, exist_ok=True)
        self._entries: collections.OrderedDict[str, VideoMemory] = collections.OrderedDict()
        self._on_disk: set[str] = set()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = self.disk_hits = self.spilled = 0
        self.model = None  # (cfg, dtype, fingerprint): set by the scheduler, to read and write memory files

    def bind(self, cfg, dtype, fingerprint: str) -> None:
        self.model = (cfg, dtype, fingerprint)

    def _path(self, key: str) -> str:
        return os.path.join(self.spill_dir, f"{key}.mem")

    def get(self, key: str) -> VideoMemory | None:
        """The entry (now the most recent), from memory or the spill folder; None (a miss, counted)."""
        with self._lock:
            vm = self._entries.get(key)
            if vm is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return vm
        vm = self._read(key)
        with self._lock:
            if vm is None:
                self.misses += 1
                return None
            self.hits += 1
            self.disk_hits += 1
        self._keep(key, vm, on_disk=True)
        return vm

    def put(self, key: str, vm: VideoMemory) -> None:
        """Keep ``vm`` (the cache's own compact copy) as the most recent entry; older ones are pushed out."""
        self._keep(key, compact(vm), on_disk=False)

    def _keep(self, key: str, vm: VideoMemory, on_disk: bool) -> None:
        size = memory_bytes(vm)
        if on_disk:
            self._on_disk.add(key)
        if size > self.max_bytes:  # larger than the whole budget: only the spill folder can hold it
            self._spill(key, vm)
            return
        with self._lock:
            old = self._entries.pop(key, None)
            self.bytes -= memory_bytes(old) if old is not None else 0
            self._entries[key] = vm
            self.bytes += size
            out = []
            while self.bytes > self.max_bytes:
                k, v = self._entries.popitem(last=False)
                self.bytes -= memory_bytes(v)
                out.append((k, v))
        for k, v in out:
            self._spill(k, v)

    def _spill(self, key: str, vm: VideoMemory) -> None:
        if self.spill_dir is None or self.model is None or key in self._on_disk:
            return
        path = self._path(key)
        cfg, _, fingerprint = self.model
        try:  # atomic (memory files are written under a temporary name, then renamed)
            memory_file.save_video_memory(path, vm, cfg, fingerprint)
        except (OSError, ValueError) as e:
            log.warning("video cache: could not write %s: %s", path, e)
            return
        self._on_disk.add(key)
        self.spilled += 1
        self._trim_disk()

    def _read(self, key: str) -> VideoMemory | None:
        if self.spill_dir is None or self.model is None or not os.path.isfile(self._path(key)):
            return None
        cfg, dtype, fingerprint = self.model
        try:
            vm = memory_file.load_video_memory(self._path(key), cfg, dtype, fingerprint)
        except (OSError, ValueError) as e:  # unreadable, or another model's: never used, removed
            log.warning("video cache: dropping %s: %s", self._path(key), e)
            _unlink(self._path(key))
            return None
        os.utime(self._path(key))  # recently used: trimmed last
        return vm

    def _trim_disk(self) -> None:
        if self.max_disk_bytes is None:
            return
        files = [os.path.join(self.spill_dir, n) for n in os.listdir(self.spill_dir) if n.endswith(".mem")
                 and not n.startswith(".")]
        files.sort(key=lambda p: os.stat(p).st_mtime_ns)
        total = sum(os.path.getsize(p) for p in files)
        while files and total > self.max_disk_bytes:
            victim = files.pop(0)
            total -= os.path.getsize(victim)
            _unlink(victim)
            self._on_disk.discard(os.path.basename(victim)[:-len(".mem")])

    def flush(self) -> None:
        """Write every entry still only in memory to the spill folder (no-op without one)."""
        with self._lock:
            entries = list(self._entries.items())
        for key, vm in entries:
            self._spill(key, vm)

    def stats(self) -> dict:
        with self._lock:
            return {"cache_entries": len(self._entries), "cache_bytes": self.bytes, "cache_hits": self.hits,
                    "cache_misses": self.misses, "cache_disk_hits": self.disk_hits, "cache_spilled": self.spilled}


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
