"""On-device generation: one compiled ``lax.while_loop`` that chooses, records and feeds back up to
``chunk`` tokens over the KV memory, with no host round trip per token.

The host calls :func:`decode_chunk` (through ``Engine.decode``) repeatedly, one chunk at a time, so
text can be streamed; the whole decoding state travels explicitly between calls:

    memory (KVMemory), last logits [B, V] fp32, seen mask [B, V] bool, PRNG key.

Semantics are those of the host loop it replaces: a token is chosen from the last logits (after
the processors of :mod:`vxl_jax.infer.sampling`), recorded, and fed back through the model (one-token
``_text_chunk``: its K/V appended to the memory) unless it is a stop id or the ``max_new``-th token;
the stop token is part of the output and the last token is never fed back. B prompts decode in
lockstep (batched answering); each row stops on its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vxl_jax.beacon.memory import KVMemory
from vxl_jax.infer.sampling import RowParams, SamplingParams, choose_jax, choose_row_jax


def stop_mask(stop_ids, vocab: int) -> jax.Array:
    """Stop ids (an iterable of ints; ids outside [0, vocab) can never be produced) -> bool [vocab]."""
    mask = jnp.zeros((vocab,), bool)
    ids = [int(i) for i in stop_ids if 0 <= int(i) < vocab]
    return mask.at[jnp.asarray(ids, jnp.int32)].set(True) if ids else mask


def decode_chunk(graphdef, state, mem: KVMemory, last, seen, key, stops, remaining, rows: RowParams | None = None, *,
                 params: SamplingParams | None, chunk: int, return_logits: bool, feed, sample: bool = True):
    """Generate up to ``chunk`` tokens per row on device, B rows in lockstep.

    mem: KVMemory (batch B); last: fp32 [B, V] logits to choose the next token from; seen: bool [B, V]
    (repetition penalty); key: PRNG keys [B, 2], one chain per row (row b draws exactly as a batch-1 call
    with that key); stops: bool [V]; remaining: int32 [B] tokens still allowed per row (``max_new`` minus
    those already produced; 0 for a row that is done).

    -> (tokens int32 [B, chunk] (first ``n[b]`` valid), n int32 [B], done bool [B] (a stop id or the
    ``remaining``-th token was produced, or the row was done already), mem, seen, key, last [B, V], step
    logits fp32 [B, chunk, V] (the unprocessed logits each token was chosen from; [B, 0, V] unless
    ``return_logits``)). A row that is done chooses nothing more and its memory is not written.
    ``feed(graphdef, state, mem, ids [B, 1], n [B], kind=...)`` -> (logits, mem): the engine's text step.
    Sampling settings: ``params`` (static, every row), or ``params`` None and ``rows`` (:class:`RowParams`: one
    setting per row, traced; ``sample`` static: whether any row samples). A row draws the same either way.
    """
    B, V = last.shape

    def choose_row(lg, sn, k, rp):
        k, sub = jax.random.split(k)
        if rp is None:
            return choose_jax(lg[None], sn[None], params, sub)[0], k
        return choose_row_jax(lg, sn, rp, sub, sample), k

    def body(c):
        i, done, n, mem, last, seen, key, toks, logits = c
        tok, new_key = jax.vmap(choose_row)(last, seen, key, rows)  # [B]
        active = ~done
        key = jnp.where(active[:, None], new_key, key)
        toks = toks.at[:, i].set(jnp.where(active, tok, 0))
        if return_logits:
            logits = logits.at[:, i].set(last)
        seen = seen | (jax.nn.one_hot(tok, V, dtype=bool) & active[:, None])
        n = n + active.astype(jnp.int32)
        finished = active & (stops[tok] | (n >= remaining))
        # Feed the token back on rows still going. Not a lax.cond: its result would be copied into the loop
        # state (the whole memory, every step); with count 0 the append writes nothing instead.
        fed = active & ~finished
        lg, mem = feed(graphdef, state, mem, tok[:, None], fed.astype(jnp.int32), kind="text")
        last = jnp.where(fed[:, None], lg[:, 0].astype(jnp.float32), last)
        return i + 1, done | finished, n, mem, last, seen, key, toks, logits

    done0 = remaining <= 0
    init = (jnp.int32(0), done0, jnp.zeros((B,), jnp.int32), mem, last.astype(jnp.float32), seen, key,
            jnp.zeros((B, chunk), jnp.int32), jnp.zeros((B, chunk if return_logits else 0, V), jnp.float32))
    _, done, n, mem, last, seen, key, toks, logits = jax.lax.while_loop(
        lambda c: (c[0] < chunk) & ~jnp.all(c[1]), body, init)
    return toks, n, done, mem, seen, key, last, logits
