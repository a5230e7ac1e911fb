"""``POST /v1/chat/completions``: a checked body -> a :class:`GenRequest` for the scheduler -> OpenAI's answer.

    job = build_request(chat, ctx)                 # GenRequest (ApiError 400 / 403 / 404 for a bad request)
    stream = submit(ctx.scheduler, job)            # RequestStream (429 queue full, 503 stopping)
    head = await first_events(stream)              # the Deltas up to the first token: a bad video is still a 400
    completion(...) / sse_events(...)              # one JSON answer, or server-sent events ending with [DONE]

The answer's shape is OpenAI's (``chat.completion`` / ``chat.completion.chunk``); ``usage`` counts the prompt
with its kept video memory slots, the answer and the memory slots taken from the cache
(``prompt_tokens_details.cached_tokens``). With ``return_token_ids`` each choice also carries the answer's ids.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import AsyncIterator

from vxl_jax.beacon.ratios import check_ratio
from vxl_jax.serve.chat import ApiError, bad_request, chat_ids
from vxl_jax.serve.fields import ChatRequest
from vxl_jax.serve.media import MediaRoot
from vxl_jax.serve.requests import (Delta, GenRequest, QueueFull, RequestStream, RowSampling, SchedulerClosed,
                                    VideoRef)

DEFAULT_RATIO = 8


@dataclasses.dataclass
class Context:
    """What the chat endpoint needs: the model (config, tokenizer, generation defaults), the scheduler, the
    media root, the served model name, the server's timeout and its Retry-After for a full queue."""

    vx: object
    scheduler: object
    media: MediaRoot
    model_name: str
    timeout_s: float | None = None
    retry_after_s: int = 1


def build_request(chat: ChatRequest, ctx: Context) -> GenRequest:
    """A checked body -> the scheduler's request (model name, prompt, video path, sampling, timeout)."""
    if chat.model is not None and chat.model != ctx.model_name:
        raise ApiError(404, f"the model {chat.model!r} does not exist (this server serves {ctx.model_name!r})",
                       code="model_not_found", param="model")
    prompt = chat_ids(chat.turns, ctx.vx.tokenizer)
    video = None
    if prompt.video_url is not None:
        video = VideoRef(ctx.media.resolve(prompt.video_url), chat.num_frames, chat.fps, _ratio(chat, ctx.vx.cfg))
    if chat.num_frames is not None and chat.fps is not None:
        raise bad_request("give 'frames' (uniform sampling) or 'fps', not both", "frames")
    sampling = row_sampling(chat, ctx.vx.generation_config)
    context = ctx.vx.cfg.lm.max_position_embeddings
    n_text = len(prompt.prefix_ids) + len(prompt.suffix_ids)
    if n_text + sampling.max_tokens > context:
        raise bad_request(f"the prompt is {n_text} text tokens and the answer may take {sampling.max_tokens}, "
                          f"more than the model's context of {context} positions", "max_tokens")
    timeouts = [t for t in (chat.timeout_s, ctx.timeout_s) if t is not None]
    return GenRequest("chatcmpl-" + secrets.token_hex(12), prompt.prefix_ids, video, prompt.suffix_ids, sampling,
                      min(timeouts) if timeouts else None)


def _ratio(chat: ChatRequest, cfg) -> int:
    ratio = DEFAULT_RATIO if chat.ratio is None else chat.ratio
    try:
        check_ratio(cfg.beacon, ratio)
    except ValueError as e:
        raise bad_request(f"'ratio': {e}", "ratio") from None
    return ratio


def row_sampling(chat: ChatRequest, generation_config: dict) -> RowSampling:
    """The request's sampling; a field it leaves out takes the checkpoint's generation_config (greedy when
    that does not sample), as ``infer.py``."""
    g = generation_config
    max_tokens = chat.max_tokens or int(g.get("max_new_tokens", 64))
    sample = bool(g.get("do_sample", False))
    temperature = chat.temperature if chat.temperature is not None else (
        float(g.get("temperature", 1.0)) if sample else 0.0)
    pick = lambda v, key, default, off: v if v is not None else (g.get(key, default) if sample else off)  # noqa
    return RowSampling(max_tokens=max_tokens, temperature=temperature,
                       top_p=float(pick(chat.top_p, "top_p", 1.0, 1.0) or 1.0),
                       top_k=int(pick(chat.top_k, "top_k", 0, 0) or 0),
                       repetition_penalty=float(chat.repetition_penalty if chat.repetition_penalty is not None
                                                else g.get("repetition_penalty", 1.0) or 1.0),
                       seed=chat.seed, stop=chat.stop)


def submit(ctx: Context, job: GenRequest) -> RequestStream:
    """Hand the request to the scheduler: 429 (with Retry-After) when its queue is full, 503 when stopping."""
    try:
        return ctx.scheduler.submit(job)
    except QueueFull:
        raise ApiError(429, "the server's request queue is full; retry later", "rate_limit_error",
                       "queue_full", headers={"Retry-After": str(ctx.retry_after_s)}) from None
    except SchedulerClosed:
        raise ApiError(503, "the server is shutting down", "server_error", "shutting_down") from None
    except ValueError as e:
        raise bad_request(str(e)) from None


async def first_events(stream: RequestStream) -> list[Delta]:
    """The Deltas up to the first one with tokens (or the last one); raises the ApiError of a request that
    failed before its first token (a bad or unreadable video: 400; a timeout: 504)."""
    head = []
    async for delta in stream:
        head.append(delta)
        if delta.token_ids or delta.finish_reason is not None:
            break
    last = head[-1] if head else Delta("", (), "cancelled")
    if not last.token_ids and last.finish_reason in ("error", "timeout"):
        raise finish_error(last)
    return head


def finish_error(delta: Delta) -> ApiError:
    """The ApiError of a request that ended in ``error`` (400: the request's video or prompt) or ``timeout``
    (504)."""
    if delta.finish_reason == "timeout":
        return ApiError(504, delta.error or "the request timed out", "timeout_error", "timeout")
    return bad_request(delta.error or "the request failed", "messages")


async def collect(head: list[Delta], stream: RequestStream) -> tuple[list[Delta], Delta]:
    """Every Delta of the request (the ``head`` already taken, then the rest) and the last one."""
    events = [delta async for delta in all_events(head, stream)]
    return events, events[-1] if events else Delta("", (), "cancelled")


def usage(delta: Delta) -> dict | None:
    """A final Delta's usage in OpenAI's shape (total and cached tokens added)."""
    u = delta.usage
    if u is None:
        return None
    prompt, completion = int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(u.get("cached_tokens", 0))}}


def openai_finish(reason: str | None) -> str | None:
    return {"stop": "stop", "length": "length"}.get(reason, reason)


def completion(job_id: str, model: str, events: list[Delta], last: Delta, with_ids: bool) -> dict:
    """The ``chat.completion`` object of a finished request."""
    if last.finish_reason in ("error", "timeout"):
        raise finish_error(last)
    choice = {"index": 0, "message": {"role": "assistant", "content": "".join(d.text for d in events)},
              "logprobs": None, "finish_reason": openai_finish(last.finish_reason)}
    if with_ids:
        choice["token_ids"] = [int(i) for d in events for i in d.token_ids]
    return {"id": job_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage(last)}


def _sse(payload) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


async def sse_events(job_id: str, model: str, head: list[Delta], stream: RequestStream, include_usage: bool,
                     with_ids: bool, record: dict) -> AsyncIterator[bytes]:
    """The answer as ``chat.completion.chunk`` events: the role first, then each Delta's text, then the finish
    reason (and usage, when asked), ``data: [DONE]`` last. A failure after the first token is an error event.
    ``record["last"]``: the last Delta so far."""
    created = int(time.time())

    def chunk(delta: dict, finish=None, ids=None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if with_ids and ids is not None:
            choice["token_ids"] = [int(i) for i in ids]
        return _sse({"id": job_id, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    last = Delta("", (), "cancelled")
    async for delta in all_events(head, stream):
        if delta.text or delta.token_ids:
            yield chunk({"content": delta.text}, ids=delta.token_ids)
        last = record["last"] = delta
    if last.finish_reason in ("error", "timeout"):
        yield _sse(finish_error(last).body())
    elif last.finish_reason != "cancelled":
        yield chunk({}, openai_finish(last.finish_reason))
        if include_usage:
            yield _sse({"id": job_id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": usage(last)})
    yield _sse("[DONE]")


async def all_events(head: list[Delta], stream: RequestStream) -> AsyncIterator[Delta]:
    """The ``head`` Deltas already taken, then the stream's until its last."""
    for delta in head:
        yield delta
        if delta.finish_reason is not None:
            return
    async for delta in stream:
        yield delta
        if delta.finish_reason is not None:
            return
