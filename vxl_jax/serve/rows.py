"""The decode rows of the scheduler: B rows decoding in lockstep, each its own prompt, memory length and
sampling settings, rows joining and leaving between chunks.

State (device): the batched memory ``[B, capacity]`` and each row's decoding state (last logits [B, V], seen mask
[B, V], PRNG key [B, 2]); host: what occupies each row. A prompted row (a row of a batched prompt's memory
[n, c] after its text, and its last logits) is written into a free row by one compiled update (:func:`_put`); a
finished row is simply left (remaining 0: it chooses nothing and its memory is not written) until another takes
its place. Shapes are bucketed so few programs compile: B is a power of two (or ``max_rows``), the capacity
``SLOT_BUCKET`` times a power of two; the batch is regathered (:meth:`DecodeRows._resize`) only when it must
grow or can shrink by 4x. Each chunk is the compiled decode loop of :mod:`vxl_jax.infer.decode` with per-row
settings (``RowParams``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vxl_jax.beacon.memory import KVMemory, take_rows
from vxl_jax.infer.core import SLOT_BUCKET, InferenceCore
from vxl_jax.infer.decode import stop_mask
from vxl_jax.infer.sampling import RowParams, SamplingParams

GREEDY = SamplingParams()


def row_sizes(max_rows: int) -> list[int]:
    """The batch sizes used: powers of two below ``max_rows``, and ``max_rows``."""
    sizes = [1 << i for i in range(max_rows.bit_length()) if 1 << i < max_rows]
    return sizes + [max_rows]


def cap_bucket(slots: int) -> int:
    """``SLOT_BUCKET`` times the smallest power of two holding ``slots``."""
    n = SLOT_BUCKET
    while n < slots:
        n *= 2
    return n


@functools.partial(jax.jit, donate_argnums=(0,))
def _put(batch, row, index):
    """Every leaf of ``row`` (batch 1) written at batch position ``index`` of ``batch`` (donated): memory leaves
    [L, B, M, ...] on axis 1, the rest on axis 0."""
    def put(b, r):
        axis = 1 if b.ndim == 5 else 0
        start = [jnp.int32(0)] * b.ndim
        start[axis] = index
        return jax.lax.dynamic_update_slice(b, r.astype(b.dtype), start)

    return jax.tree.map(put, batch, row)


@dataclasses.dataclass
class Occupant:
    """What the scheduler keeps about an active row (``item``: its own request record)."""

    item: object
    params: SamplingParams
    max_new: int
    need: int  # memory capacity the row needs until its last token
    produced: int = 0


class DecodeRows:
    """B decode rows over one batched memory (B grows and shrinks with the load, up to ``max_rows``)."""

    def __init__(self, core: InferenceCore, max_rows: int, stops, chunk: int):
        self.core, self.max_rows, self.chunk = core, int(max_rows), int(chunk)
        self.vocab = core.cfg.lm.vocab_size
        self.stop_ids = {int(s) for s in stops}
        self.stops = stop_mask(self.stop_ids, self.vocab)
        self.sizes = row_sizes(self.max_rows)
        self.rows: list[Occupant | None] = []
        self.state = None  # (KVMemory [B, cap], last [B, V], seen [B, V], keys [B, 2]) or None when empty

    @property
    def active(self) -> int:
        return sum(r is not None for r in self.rows)

    @property
    def free(self) -> int:
        return self.max_rows - self.active

    @property
    def capacity(self) -> int:
        return 0 if self.state is None else self.state[0].capacity

    def insert(self, occ: Occupant, mem: KVMemory, at: int, last, seen, key) -> None:
        """A prompted row: row ``at`` of ``mem`` [n, c] (after its text), ``last`` [V] fp32, ``seen`` [V] bool,
        ``key`` [2]."""
        if not self.free:
            raise RuntimeError("no free decode row")
        need_rows = self.active + 1
        cap = max(self.capacity, cap_bucket(max(occ.need, mem.capacity)))
        if self.state is None or need_rows > len(self.rows) or cap > self.capacity:
            self._resize(next(s for s in self.sizes if s >= need_rows), cap)
        index = self.rows.index(None)
        row = (take_rows(mem, [at], self.capacity), jnp.asarray(last, jnp.float32)[None], jnp.asarray(seen)[None],
               jnp.asarray(key)[None])
        self.state = _put(self.state, row, jnp.int32(index))
        self.rows[index] = occ

    def release(self, index: int) -> None:
        """Free row ``index`` (its slot is reused by the next insert); shrink when few rows are left."""
        self.rows[index] = None
        n = self.active
        if n == 0:
            self.rows, self.state = [], None
            return
        smaller = next(s for s in self.sizes if s >= n)
        cap = cap_bucket(max(r.need for r in self.rows if r is not None))
        if 4 * smaller <= len(self.rows) or 4 * cap <= self.capacity:
            self._resize(smaller, cap)

    def _resize(self, size: int, cap: int) -> None:
        """Regather the batch as ``size`` rows of ``cap`` slots, active rows first (free rows copy row 0)."""
        keep = [i for i, r in enumerate(self.rows) if r is not None]
        if self.state is None:
            lm = self.core.cfg.lm
            mem = KVMemory.empty(lm.num_layers, size, cap, lm.num_kv_heads, lm.head_dim, self.core.dtype)
            self.state = (mem, jnp.zeros((size, self.vocab), jnp.float32), jnp.zeros((size, self.vocab), bool),
                          jnp.zeros((size, 2), jnp.uint32))
            self.rows = [None] * size
            return
        idx = keep + [keep[0] if keep else 0] * (size - len(keep))
        mem, last, seen, keys = self.state
        at = jnp.asarray(idx, jnp.int32)
        self.state = (take_rows(mem, idx, cap), last[at], seen[at], keys[at])
        self.rows = [self.rows[i] for i in keep] + [None] * (size - len(keep))

    def step(self) -> list[tuple[int, np.ndarray, bool]]:
        """One decode chunk over the active rows -> (row index, new ids int32, done) for each active row."""
        remaining = np.array([0 if r is None else r.max_new - r.produced for r in self.rows], np.int32)
        params = [GREEDY if r is None else r.params for r in self.rows]
        rows = jax.tree.map(jnp.asarray, RowParams.of(params))
        sample = any(p.do_sample for p in params)
        mem, last, seen, keys = self.state
        toks, n, done, mem, seen, keys, last, _ = self.core.engine.decode(
            mem, last, seen, keys, self.stops, jnp.asarray(remaining), params=None, chunk=self.chunk, rows=rows,
            sample=sample)
        self.state = (mem, last, seen, keys)
        toks, n, done = np.asarray(toks), np.asarray(n), np.asarray(done)
        out = []
        for b, r in enumerate(self.rows):
            if r is not None:
                r.produced += int(n[b])
                out.append((b, toks[b, :n[b]].astype(np.int32), bool(done[b])))
        return out
