"""On-device generation: one compiled ``lax.while_loop`` that chooses, records and feeds back up to
``chunk`` tokens over the KV memory, with no host round trip per token.

The host calls :func:`decode_chunk` (through ``Engine.decode``) repeatedly, one chunk at a time, so
text can be streamed; the whole decoding state travels explicitly between calls:

    memory (KVMemory), last logits [B, V] fp32, seen mask [B, V] bool, PRNG key.

Semantics are those of the host loop it replaces: a token is chosen from the last logits (after
the processors of :mod:`vxl_jax.sampling`), recorded, and fed back through the model (one-token
``_text_chunk``: its K/V appended to the memory) unless it is a stop id or the ``max_new``-th token;
the stop token is part of the output and the last token is never fed back. Batch size 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vxl_jax.memory import KVMemory
from vxl_jax.sampling import SamplingParams, choose_jax


def stop_mask(stop_ids, vocab: int) -> jax.Array:
    """Stop ids (an iterable of ints; ids outside [0, vocab) can never be produced) -> bool [vocab]."""
    mask = jnp.zeros((vocab,), bool)
    ids = [int(i) for i in stop_ids if 0 <= int(i) < vocab]
    return mask.at[jnp.asarray(ids, jnp.int32)].set(True) if ids else mask


def decode_chunk(graphdef, state, mem: KVMemory, last, seen, key, stops, remaining, *, params: SamplingParams,
                 chunk: int, return_logits: bool, feed):
    """Generate up to ``chunk`` tokens on device.

    mem: KVMemory (batch 1); last: fp32 [1, V] logits to choose the next token from; seen: bool
    [1, V] (repetition penalty); key: PRNG key; stops: bool [V]; remaining: int32 [] tokens still
    allowed (``max_new`` minus those already produced, >= 1).

    -> (tokens int32 [chunk] (first ``n`` valid), n int32 [], done bool [] (a stop id or the
    ``remaining``-th token was produced), mem, seen, key, last [1, V], step logits fp32 [chunk, V]
    (the unprocessed logits each token was chosen from; [0, V] unless ``return_logits``)).
    ``feed(graphdef, state, mem, ids [1, 1], n [1], kind=...)`` -> (logits, mem): the engine's text step.
    """
    V = last.shape[-1]

    def body(c):
        i, _, mem, last, seen, key, toks, logits = c
        key, sub = jax.random.split(key)
        tok = choose_jax(last, seen, params, sub)  # [1]
        toks = toks.at[i].set(tok[0])
        if return_logits:
            logits = logits.at[i].set(last[0])
        seen = seen.at[0, tok[0]].set(True)
        done = stops[tok[0]] | (i + 1 >= remaining)
        # Feed the token back unless done. Not a lax.cond: its result would be copied into the loop
        # state (the whole memory, every step); with count 0 the append writes nothing instead.
        lg, mem = feed(graphdef, state, mem, tok[:, None], (~done).astype(jnp.int32)[None], kind="text")
        last = jnp.where(done, last, lg[:, 0].astype(jnp.float32))
        return i + 1, done, mem, last, seen, key, toks, logits

    init = (jnp.int32(0), jnp.bool_(False), mem, last.astype(jnp.float32), seen, key,
            jnp.zeros((chunk,), jnp.int32), jnp.zeros((chunk if return_logits else 0, V), jnp.float32))
    n, done, mem, last, seen, key, toks, logits = jax.lax.while_loop(lambda c: (c[0] < chunk) & ~c[1], body, init)
    return toks, n, done, mem, seen, key, last, logits
