"""Grain input pipeline: records -> padded fixed-shape samples -> ``[accum, batch, ...]`` numpy steps.

    loader = TrainLoader(records, spec, batch_size=2, accum=1, seed=0)
    step = next(loader)              # dict of numpy arrays, leading dims [accum, local_batch]
    state = loader.get_state()       # JSON-able; ``loader.set_state(state)`` resumes exactly

Per sample (static caps P = ``max_prefix``, S = ``max_suffix``, F = ``frames_upbound``):
    prefix_ids/prefix_labels int32 [P], prefix_len int32, pixels uint8 [F, H, H, 3] (resized + center-cropped
    RGB frames, 0-padded; CLIP normalization happens on the device, in ``VideoXLModel.encode_frames``),
    num_frames int32 (0 = text only), suffix_ids/suffix_labels int32 [S], suffix_len int32.
Reading order: :class:`GlobalOrderSampler` (shuffled per epoch from ``seed``), repeated for ever (train)
or once (eval); each of ``jax.process_count()`` processes reads its rows of every global batch, and the
global batches are the same for any number of processes.

Bad records (missing/corrupt video or image, bad conversations, prefix longer than P) are
logged with their id, counted in ``loader.skipped`` (reported as a metric) and skipped; a
suffix longer than S is truncated and counted in ``loader.truncated``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys

import logging
import os

import grain
import numpy as np

from vxl_jax.text.constants import DEFAULT_SYSTEM, IGNORE_INDEX
from vxl_jax.data.conversation import RecordError, tokenize_conversation
from vxl_jax.data.frames import load_image, load_training_video
from vxl_jax.media.preprocess import resize_crop_frames
from vxl_jax.text.tokenizer import build_tiny_tokenizer
from vxl_jax.media.video import VideoError

log = logging.getLogger(__name__)

FIELDS = ("prefix_ids", "prefix_labels", "prefix_len", "pixels", "num_frames", "suffix_ids", "suffix_labels",
          "suffix_len")


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """How records become fixed-shape samples."""

    max_prefix: int = 32
    max_suffix: int = 64
    frames_upbound: int = 20
    image_size: int = 336
    video_fps: float = 1.0
    video_folder: str = ""
    image_folder: str = ""
    tokenizer: str = "tiny"  # "tiny" (built-in) or a tokenizer folder for AutoTokenizer
    system: str = DEFAULT_SYSTEM


def load_tokenizer(name: str):
    if name == "tiny":
        return build_tiny_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _pad(a: np.ndarray, n: int, value: int) -> np.ndarray:
    out = np.full((n,) + a.shape[1:], value, a.dtype)
    out[: len(a)] = a
    return out


class ProcessRecord(grain.transforms.Map):
    """One record -> a padded sample dict, or ``{"_ok": False, "_id", "_error"}`` for a bad record."""

    def __init__(self, spec: SampleSpec):
        self.spec = spec
        self._tok = None

    def _frames(self, rec) -> np.ndarray | None:
        s = self.spec
        if "video" in rec:
            return load_training_video(os.path.join(s.video_folder, rec["video"]), s.frames_upbound, s.video_fps)[0]
        if "image" in rec:
            return load_image(os.path.join(s.image_folder, rec["image"]))
        return None

    def map(self, rec):
        s = self.spec
        rid = str(rec.get("id", "?"))
        try:
            if self._tok is None:
                self._tok = load_tokenizer(s.tokenizer)
            frames = self._frames(rec)
            tok = tokenize_conversation(rec["conversations"], self._tok, frames is not None, system=s.system)
            if len(tok.prefix_ids) > s.max_prefix:
                raise RecordError(f"prefix of {len(tok.prefix_ids)} tokens exceeds data.max_prefix={s.max_prefix}")
            truncated = len(tok.suffix_ids) > s.max_suffix
            suffix_ids, suffix_labels = tok.suffix_ids[: s.max_suffix], tok.suffix_labels[: s.max_suffix]
            if not np.any(tok.prefix_labels != IGNORE_INDEX) and not np.any(suffix_labels != IGNORE_INDEX):
                raise RecordError("no supervised token within max_suffix")
            pixels = np.zeros((s.frames_upbound, s.image_size, s.image_size, 3), np.uint8)
            n_frames = 0
            if frames is not None:
                px = resize_crop_frames(frames[: s.frames_upbound], size=s.image_size)
                n_frames = len(px)
                pixels[:n_frames] = px
        except (RecordError, VideoError, KeyError, OSError) as e:
            return {"_ok": False, "_id": rid, "_error": f"{type(e).__name__}: {e}"}
        return {
            "_ok": True, "_id": rid, "_truncated": truncated,
            "prefix_ids": _pad(tok.prefix_ids, s.max_prefix, 0),
            "prefix_labels": _pad(tok.prefix_labels, s.max_prefix, IGNORE_INDEX),
            "prefix_len": np.int32(len(tok.prefix_ids)),
            "pixels": pixels, "num_frames": np.int32(n_frames),
            "suffix_ids": _pad(suffix_ids, s.max_suffix, 0),
            "suffix_labels": _pad(suffix_labels, s.max_suffix, IGNORE_INDEX),
            "suffix_len": np.int32(len(suffix_ids)),
        }


def shard_options():
    import jax

    return grain.sharding.ShardOptions(shard_index=jax.process_index(), shard_count=jax.process_count(),
                                       drop_remainder=True)


class GlobalOrderSampler:
    """Grain sampler whose global batches do not depend on the number of processes.

    Records are read in one order (shuffled per epoch from ``seed``: ``default_rng([seed, epoch])``),
    cut into global micro-batches of ``rows * processes`` records; process p reads rows
    ``[p * rows, (p + 1) * rows)`` of each. Assembled with
    ``jax.make_array_from_process_local_data`` (process p's rows after process p-1's), every global
    batch is the one a single process reads, row for row, so N processes train exactly like one.
    Grain's DataLoader hands process p the sampler indices ``p, p + N, p + 2N, ...``
    (``shard_options``); :meth:`position` maps them onto that order.
    """

    def __init__(self, num_records: int, rows: int, processes: int = 1, shuffle: bool = True, seed: int = 0,
                 num_epochs: int | None = None):
        if num_records <= 0:
            raise ValueError("no records to sample")
        self.num_records, self.rows, self.processes = int(num_records), int(rows), int(processes)
        self.block = self.rows * self.processes
        self.shuffle, self.seed, self.num_epochs = shuffle, int(seed), num_epochs
        self._max = None if num_epochs is None else int(num_epochs) * self.num_records
        self._order = (None, None)  # (epoch, permutation) of the last epoch read

    def __len__(self) -> int:
        return sys.maxsize if self._max is None else self._max

    def __repr__(self) -> str:  # grain checks it against a saved state: no process count in it
        return (f"GlobalOrderSampler(num_records={self.num_records}, global_rows={self.block}, "
                f"shuffle={self.shuffle}, seed={self.seed}, num_epochs={self.num_epochs})")

    def position(self, index: int) -> int:
        """Grain's sampler index (interleaved over processes) -> position in the single-process order."""
        m, r = divmod(index, self.block)
        if self._max is not None and (m + 1) * self.block > self._max:  # a last partial batch: plain interleave
            return index
        row, process = divmod(r, self.processes)
        return m * self.block + process * self.rows + row

    def record_key(self, position: int) -> int:
        epoch, k = divmod(position, self.num_records)
        if not self.shuffle:
            return k
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_records))
        return int(self._order[1][k])

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        if index < 0 or (self._max is not None and index >= self._max):
            raise IndexError(f"sampler index {index} out of range")
        return grain.RecordMetadata(index=index, record_key=self.record_key(self.position(index)))


def _grain_state_at(fresh: dict, consumed: int, shard_index: int, shard_count: int) -> dict:
    """A grain DataLoader iterator state (``fresh``: a new iterator's, for its format) of a process that has
    drawn ``consumed`` items: grain records per worker the last *global* sampler index it read."""
    state = dict(fresh)
    workers = int(state["worker_count"])
    if workers == 0:
        state["last_seen_indices"] = {"0": shard_index - shard_count + consumed * shard_count}
        return state
    g = workers * shard_count
    served = [(consumed - w + workers - 1) // workers for w in range(workers)]  # items drawn from worker w
    state["last_seen_indices"] = {str(w): shard_index - g + w * shard_count + served[w] * g for w in range(workers)}
    state["last_worker_index"] = consumed % workers - 1
    return state


class TrainLoader:
    """Iterator of steps ``{field: [accum, batch, ...]}`` over a Grain ``DataLoader``; resumable."""

    def __init__(self, records: list, spec: SampleSpec, batch_size: int, accum: int = 1, seed: int = 0,
                 shuffle: bool = True, num_epochs: int | None = None, workers: int = 0, skipped_at_load: int = 0):
        if not records:
            raise ValueError("no usable training records (all were skipped or the file is empty)")
        self.batch_size, self.accum = int(batch_size), int(accum)
        self.skipped, self.truncated = int(skipped_at_load), 0
        self.recent_skips: collections.deque = collections.deque(maxlen=20)
        if workers:
            from absl import flags

            flags.FLAGS.mark_as_parsed()
        self._shard = shard_options()
        sampler = GlobalOrderSampler(len(records), self.batch_size, self._shard.shard_count, shuffle=shuffle,
                                     seed=seed, num_epochs=num_epochs)
        self._loader = grain.DataLoader(data_source=records, sampler=sampler, operations=[ProcessRecord(spec)],
                                        worker_count=workers, shard_options=self._shard)
        self._it = iter(self._loader)
        self._drawn = 0  # items drawn from grain by this process (skipped ones included)

    def _next_good(self):
        while True:
            item = next(self._it)  # StopIteration ends an eval pass
            self._drawn += 1
            if item["_ok"]:
                self.truncated += int(item["_truncated"])
                return item
            self.skipped += 1
            self.recent_skips.append(item["_id"])
            log.warning("skipping record %s: %s", item["_id"], item["_error"])

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        items = [self._next_good() for _ in range(self.accum * self.batch_size)]
        out = {}
        for f in FIELDS:
            a = np.stack([it[f] for it in items])
            out[f] = a.reshape((self.accum, self.batch_size) + a.shape[1:])
        return out

    def get_state(self) -> dict:
        """JSON-able state; taken between steps it resumes at the next step's first record.

        ``position``: records of the global order consumed by all processes together (this process's
        count times the process count: exact while no process skipped a bad record), so a checkpoint
        resumes on any number of processes (the primary process's state is the one saved)."""
        return {"grain": self._it.get_state().decode(), "skipped": self.skipped, "truncated": self.truncated,
                "position": self._drawn * self._shard.shard_count}

    def set_state(self, state: dict) -> None:
        if "position" in state:
            position, count = int(state["position"]), self._shard.shard_count
            if position % count:
                log.warning("data position %d is not a multiple of %d processes: resuming at %d", position, count,
                            position // count * count)
            self._drawn = position // count
            fresh = json.loads(self._it.get_state().decode())
            grain_state = _grain_state_at(fresh, self._drawn, self._shard.shard_index, count)
            self._it.set_state(json.dumps(grain_state).encode())
        else:  # a state saved before positions were recorded
            self._it.set_state(state["grain"].encode())
        self.skipped, self.truncated = int(state["skipped"]), int(state["truncated"])


