"""OpenAI chat messages -> the project's chat prompt as token ids around the one video (docs/algorithm.md §2).

    chat = parse_chat(body)                               # ChatRequest (or ApiError: a 400 with one line)
    prompt = chat_ids(chat.messages, tokenizer)           # ChatPrompt: prefix_ids, video_url, suffix_ids

The template is :func:`vxl_jax.text.prompt.chat_prompt` extended to many turns (Qwen ChatML)::

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n<image>\\n{text}<|im_end|>\\n          (the turn with the video: <image>\\n first)
    <|im_start|>assistant\\n{answer}<|im_end|>\\n  ...  <|im_start|>assistant\\n

One user question about a video gives exactly ``chat_prompt(question, system)``. The ids before ``<image>``
are the prefix, the ids after it (this and later turns, the assistant header) the suffix, each chunk
tokenized on its own as :func:`vxl_jax.text.prompt.tokenizer_image_token` does, so the request is
``vx.generate(prefix + [-200] + suffix, ...)`` and every turn of a chat shares the memory of prefix + video.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from vxl_jax.infer.results import split_prompt
from vxl_jax.text.constants import DEFAULT_SYSTEM, IMAGE_PLACEHOLDER
from vxl_jax.text.prompt import PromptError, tokenizer_image_token

ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """A refused request: HTTP ``status``, a one-line ``message``, OpenAI's error ``type``, ``code`` and
    ``param``; ``headers`` (e.g. Retry-After) go on the response."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


@dataclasses.dataclass(frozen=True)
class ChatPrompt:
    """The prompt ids around the video: ``prefix_ids`` int32 [P] (the whole prompt without a video),
    ``video_url`` (the one video part's url, or None), ``suffix_ids`` int32 [S] ([0] without a video)."""

    prefix_ids: np.ndarray
    video_url: str | None
    suffix_ids: np.ndarray


@dataclasses.dataclass(frozen=True)
class Turn:
    role: str
    text: str
    video_url: str | None = None


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def parse_messages(messages: Any) -> list[Turn]:
    """OpenAI ``messages`` -> turns; a 400 for an empty list, an unknown role or part type, more than one
    video, a system message after the first, a text containing ``<image>``, or a last message not from the
    user."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    turns = [_turn(i, m) for i, m in enumerate(messages)]
    videos = [t for t in turns if t.video_url is not None]
    if len(videos) > 1:
        raise bad_request(f"the messages have {len(videos)} videos; exactly one video (or none) is supported",
                          "messages")
    if any(t.role == "system" for t in turns[1:]):
        raise bad_request("a system message may only come first", "messages")
    if videos and videos[0].role != "user":
        raise bad_request("the video must be part of a user message", "messages")
    if turns[-1].role != "user":
        raise bad_request("the last message must be from the user", "messages")
    return turns


def _turn(i: int, m: Any) -> Turn:
    param = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise bad_request(f"{param} must be an object with a role in {', '.join(ROLES)}", param)
    content = m.get("content")
    if isinstance(content, str):
        texts, videos = [content], []
    elif isinstance(content, list):
        texts, videos = _parts(param, content)
    else:
        raise bad_request(f"{param}.content must be a string or a list of content parts", param)
    text = "\n".join(texts)
    if IMAGE_PLACEHOLDER in text:
        raise bad_request(f"{param} contains the video placeholder {IMAGE_PLACEHOLDER!r}; send the video as a "
                          f"video_url part", param)
    if len(videos) > 1:
        raise bad_request(f"{param} has {len(videos)} videos; exactly one video is supported", param)
    return Turn(m["role"], text, videos[0] if videos else None)


def _parts(param: str, parts: list) -> tuple[list[str], list[str]]:
    texts, videos = [], []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "video_url" and isinstance(part.get("video_url"), dict) \
                and isinstance(part["video_url"].get("url"), str):
            videos.append(part["video_url"]["url"])
        else:
            raise bad_request(f"{param}.content[{j}] must be a text part or a video_url part "
                              f"({{'type': 'video_url', 'video_url': {{'url': ...}}}}), got type {kind!r}", param)
    return texts, videos


def chat_text(turns: list[Turn]) -> str:
    """The ChatML prompt of the turns (``<image>`` where the video goes), ending with the assistant header."""
    system = DEFAULT_SYSTEM
    if turns[0].role == "system":
        system, turns = turns[0].text, turns[1:]
    out = [f"<|im_start|>system\n{system}<|im_end|>\n"]
    for t in turns:
        video = f"{IMAGE_PLACEHOLDER}\n" if t.video_url is not None else ""
        out.append(f"<|im_start|>{t.role}\n{video}{t.text}<|im_end|>\n")
    return "".join(out) + "<|im_start|>assistant\n"


def chat_ids(turns: list[Turn], tokenizer) -> ChatPrompt:
    """Turns -> the prompt's ids split around the video (see the module docstring)."""
    if not any(t.text.strip() for t in turns if t.role == "user"):
        raise bad_request("the user messages have no text: ask a question about the video", "messages")
    try:
        ids = tokenizer_image_token(chat_text(turns), tokenizer)
    except PromptError as e:
        raise bad_request(str(e), "messages") from None
    prefix, suffix = split_prompt(ids)
    url = next((t.video_url for t in turns if t.video_url is not None), None)
    return ChatPrompt(prefix, url, np.zeros(0, np.int32) if suffix is None else suffix)
