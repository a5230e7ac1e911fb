"""Qwen ChatML prompt with one ``<image>`` video placeholder, and its token ids (docs/algorithm.md §2).

    prompt = chat_prompt("What happens?")
    ids = tokenizer_image_token(prompt, tokenizer)     # int32 [S], one -200 where the video goes
    tail = suffix_ids("What happens?", tokenizer)      # the ids after the -200 (to reuse a saved memory)
"""

from __future__ import annotations

import numpy as np

from vxl_jax.text.constants import DEFAULT_SYSTEM, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX


class PromptError(ValueError):
    """A prompt that cannot be tokenized for the model (e.g. more than one ``<image>`` placeholder)."""


def check_question(question: str) -> str:
    """The question unchanged, or ``PromptError`` if it is empty or contains ``<image>``."""
    if not isinstance(question, str) or not question.strip():
        raise PromptError("the question is empty")
    if IMAGE_PLACEHOLDER in question:
        raise PromptError(f"the question contains the video placeholder {IMAGE_PLACEHOLDER!r}; the prompt would have "
                          f"two placeholders but exactly one video is supported")
    return question


def chat_prompt(question: str, system: str = DEFAULT_SYSTEM, with_video: bool = True) -> str:
    """``<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<image>\\n{question}<|im_end|>\\n``
    ``<|im_start|>assistant\\n`` (without ``<image>\\n`` when ``with_video`` is False)."""
    video = f"{IMAGE_PLACEHOLDER}\n" if with_video else ""
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{video}{question}<|im_end|>\n"
            f"<|im_start|>assistant\n")


def _encode(text: str, tokenizer) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_prompt(prompt: str) -> str:
    """The prompt unchanged, or ``PromptError`` if it has more than one ``<image>`` placeholder."""
    n = prompt.count(IMAGE_PLACEHOLDER)
    if n > 1:
        raise PromptError(f"the prompt has {n} {IMAGE_PLACEHOLDER} placeholders; exactly one video placeholder "
                          f"(or none, for text only) is supported")
    return prompt


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int | None = None) -> np.ndarray:
    """Split on ``<image>``, tokenize each chunk on its own (no special-token additions), join with -200.

    Returns int32 [S]. Raises ``PromptError`` for more than one placeholder.
    """
    index = IMAGE_TOKEN_INDEX if image_token_index is None else image_token_index
    check_prompt(prompt)
    chunks = prompt.split(IMAGE_PLACEHOLDER)
    ids = _encode(chunks[0], tokenizer)
    if len(chunks) == 2:
        ids = ids + [index] + _encode(chunks[1], tokenizer)
    return np.asarray(ids, np.int32)


def suffix_text(question: str) -> str:
    """The prompt text after the video placeholder: ``\\n{question}<|im_end|>\\n<|im_start|>assistant\\n``."""
    return chat_prompt(check_question(question)).split(IMAGE_PLACEHOLDER, 1)[1]


def suffix_ids(question: str, tokenizer) -> np.ndarray:
    """int32 ids of ``suffix_text(question)``: the question asked of a saved video memory."""
    return np.asarray(_encode(suffix_text(question), tokenizer), np.int32)


def question_ids(question: str, tokenizer, system: str = DEFAULT_SYSTEM) -> np.ndarray:
    """Full prompt ids for a question about one video (checks the question first)."""
    return tokenizer_image_token(chat_prompt(check_question(question), system), tokenizer)
