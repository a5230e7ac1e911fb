"""Qwen ChatML tokenisation of a conversation with the training label mask (docs/algorithm.md §8).

Layout (``qwen_1_5`` template)::

    <|im_start|>system\n{system}<|im_end|>\n
    <|im_start|>user\n<image>\n{question}<|im_end|>\n
    <|im_start|>assistant\n{answer}<|im_end|>\n   ... (more turns)

Label mask (targets before shifting), as LLaVA-NeXT's ``preprocess_qwen``:

* every turn's ``<|im_start|>``, ``<|im_end|>`` and the trailing ``"\n"`` keep their labels
  (the LLaVA-NeXT quirk, kept so fine-tuning matches the released recipe);
* the role word and its ``"\n"`` are ignored (-100) in every turn;
* system and user contents are ignored; assistant contents are supervised;
* the ``<image>`` placeholder splits the sequence into prefix and suffix (the visual and beacon
  positions in between carry no label).

Deviation (documented): the original training prompt gets ``<image>`` + "\n" + "\n..." (docs/algorithm.md §10);
we use the inference layout ``<image>\n{question}`` (one newline) so training and inference agree.

Labels are returned *shifted*: ``label[i]`` = target of position ``i + 1`` (-100 = ignore); the last
prefix position (a visual token follows) and the last suffix position are -100.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vxl_jax.text.constants import DEFAULT_SYSTEM, IGNORE_INDEX, IMAGE_PLACEHOLDER
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class RecordError(ValueError):
    """A training record that cannot be used (the message names the problem)."""


@dataclasses.dataclass
class Tokenized:
    """prefix/suffix ids and shifted labels as int32 numpy arrays (prefix empty for text-only)."""

    prefix_ids: np.ndarray
    prefix_labels: np.ndarray
    suffix_ids: np.ndarray
    suffix_labels: np.ndarray
    has_visual: bool


def normalize_conversation(conversations, has_visual: bool) -> list[tuple[str, str]]:
    """-> [(role, text)] with roles user/assistant/system; moves a single ``<image>`` to the front of the
    first user turn (LLaVA ``preprocess_multimodal``): ``"<image>\\n" + rest.strip()``."""
    if not isinstance(conversations, list) or not conversations:
        raise RecordError("no conversations (expected a non-empty list of {from, value})")
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RecordError(f"conversation turn {i} is not a {{from, value}} object")
        role = ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise RecordError(f"conversation turn {i}: unknown speaker {turn['from']!r} (human|gpt|system)")
        if not isinstance(turn["value"], str):
            raise RecordError(f"conversation turn {i}: value is not a string")
        turns.append((role, turn["value"]))
    n_image = sum(t.count(IMAGE_PLACEHOLDER) for _, t in turns)
    if not has_visual:
        if n_image:
            raise RecordError(f"{IMAGE_PLACEHOLDER} placeholder in a record without a video or image")
        return turns
    if n_image > 1:
        raise RecordError(f"{n_image} {IMAGE_PLACEHOLDER} placeholders; exactly one video/image is supported")
    first_user = next((i for i, (r, _) in enumerate(turns) if r == "user"), None)
    if first_user is None:
        raise RecordError("no human turn to attach the video to")
    if n_image == 1:
        where = next(i for i, (_, t) in enumerate(turns) if IMAGE_PLACEHOLDER in t)
        if turns[where][0] != "user":
            raise RecordError(f"{IMAGE_PLACEHOLDER} placeholder in a {turns[where][0]} turn")
        first_user = where
    role, text = turns[first_user]
    turns[first_user] = (role, IMAGE_PLACEHOLDER + "\n" + text.replace(IMAGE_PLACEHOLDER, "").strip())
    if not any(r == "assistant" for r, _ in turns):
        raise RecordError("no gpt (assistant) turn: nothing to learn")
    return turns


def _special(tokenizer, token: str) -> int:
    i = tokenizer.convert_tokens_to_ids(token)
    if i is None or (tokenizer.unk_token_id is not None and i == tokenizer.unk_token_id):
        raise RecordError(f"tokenizer has no {token} token")
    return int(i)


def tokenize_conversation(conversations, tokenizer, has_visual: bool, system: str = DEFAULT_SYSTEM) -> Tokenized:
    """ChatML ids and shifted labels of one record (see the module docstring)."""
    turns = normalize_conversation(conversations, has_visual)
    if turns[0][0] != "system":
        turns = [("system", system)] + turns
    im_start, im_end = _special(tokenizer, "<|im_start|>"), _special(tokenizer, "<|im_end|>")

    def enc(text):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    nl = enc("\n")
    ids: list[int] = []
    tgt: list[int] = []
    image_at = None
    for role, text in turns:
        head = enc(role + "\n")
        ids += [im_start] + head
        tgt += [im_start] + [IGNORE_INDEX] * len(head)
        pieces = text.split(IMAGE_PLACEHOLDER) if role == "user" else [text]
        for j, piece in enumerate(pieces):
            if j:
                image_at = len(ids)
                ids.append(-1)  # placeholder slot, removed below
                tgt.append(IGNORE_INDEX)
            body = enc(piece)
            ids += body
            tgt += body if role == "assistant" else [IGNORE_INDEX] * len(body)
        ids += [im_end] + nl
        tgt += [im_end] + nl

    def shift(t):
        out = np.full(len(t), IGNORE_INDEX, np.int32)
        out[:-1] = t[1:]
        return out

    ids_a, tgt_a = np.asarray(ids, np.int32), np.asarray(tgt, np.int32)
    if image_at is None:
        return Tokenized(np.zeros(0, np.int32), np.zeros(0, np.int32), ids_a, shift(tgt_a), False)
    return Tokenized(ids_a[:image_at], shift(tgt_a[:image_at]), ids_a[image_at + 1:], shift(tgt_a[image_at + 1:]), True)
