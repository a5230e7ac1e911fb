"""The fields of a ``POST /v1/chat/completions`` body, checked one by one (a 400 with one line for a bad one).

OpenAI's own fields: ``model``, ``messages``, ``stream``, ``stream_options.include_usage``, ``max_tokens`` /
``max_completion_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, ``n`` (1 only). The extra fields
(``extra_body`` in the openai client, as vLLM takes them): ``top_k``, ``repetition_penalty``, ``frames`` (or
``num_frames``), ``fps``, ``ratio``, ``timeout`` (seconds, at most the server's) and ``return_token_ids`` (the
answer's token ids in each choice, as vLLM's). Unknown fields are ignored, as OpenAI's clients expect.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from vxl_jax.serve.chat import Turn, bad_request, parse_messages

MAX_STOP_STRINGS = 4  # as OpenAI


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A checked request body; None: the server's / checkpoint's default."""

    model: str | None
    turns: list[Turn]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    num_frames: int | None = None
    fps: float | None = None
    ratio: int | None = None
    timeout_s: float | None = None
    return_token_ids: bool = False


def parse_chat(body: dict) -> ChatRequest:
    """A JSON body (a dict) -> :class:`ChatRequest`, or ``ApiError`` (400) naming the bad field."""
    if body.get("n", 1) not in (1, None):
        raise bad_request("only n=1 is supported", "n")
    if body.get("logprobs") or body.get("tools"):
        raise bad_request("logprobs and tools are not supported", "logprobs" if body.get("logprobs") else "tools")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", "model")
    frames = _pick(body, "frames", "num_frames")
    return ChatRequest(
        model=model, turns=parse_messages(body.get("messages")),
        stream=_flag(body, "stream"), include_usage=_flag(body.get("stream_options") or {}, "include_usage"),
        max_tokens=_int(body, _pick_name(body, "max_completion_tokens", "max_tokens"), low=1),
        temperature=_float(body, "temperature", low=0.0), top_p=_top_p(body),
        top_k=_int(body, "top_k", low=0), repetition_penalty=_float(body, "repetition_penalty", low=0.0, open_low=True),
        seed=_int(body, "seed"), stop=_stop(body.get("stop")),
        num_frames=_int({"frames": frames}, "frames", low=1), fps=_float(body, "fps", low=0.0, open_low=True),
        ratio=_int(body, "ratio", low=1), timeout_s=_float(body, "timeout", low=0.0, open_low=True),
        return_token_ids=_flag(body, "return_token_ids"))


def _pick(body: dict, *names: str) -> Any:
    return body.get(_pick_name(body, *names))


def _pick_name(body: dict, *names: str) -> str:
    return next((n for n in names if body.get(n) is not None), names[0])


def _flag(body: dict, name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad_request(f"'{name}' must be true or false", name)
    return v


def _int(body: dict, name: str, low: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_request(f"'{name}' must be an integer, got {v!r}", name)
    if low is not None and v < low:
        raise bad_request(f"'{name}' must be >= {low}, got {v}", name)
    return v


def _float(body: dict, name: str, low: float | None = None, open_low: bool = False) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad_request(f"'{name}' must be a number, got {v!r}", name)
    if low is not None and (v <= low if open_low else v < low):
        raise bad_request(f"'{name}' must be {'>' if open_low else '>='} {low:g}, got {v}", name)
    return float(v)


def _top_p(body: dict) -> float | None:
    v = _float(body, "top_p", low=0.0, open_low=True)
    if v is not None and v > 1:
        raise bad_request(f"'top_p' must be in (0, 1], got {v}", "top_p")
    return v


def _stop(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_request("'stop' must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", "stop")
    return tuple(stops)
