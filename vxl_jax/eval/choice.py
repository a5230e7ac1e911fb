"""Multiple-choice prompting, letter parsing and option log-likelihoods.

Each benchmark is asked the way its reference evaluation asks it (a :class:`PromptStyle`: system
prompt, user text with lettered options, and an optional start of the assistant's answer), the model
answers greedily, and :func:`parse_letter` reads the chosen letter from the answer text. Scoring by
log-likelihood instead compares, for one prompt, the log-probability of each option's letter
(:func:`letter_logprobs`) or of each option's text (:func:`text_logprobs`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import numpy as np

from vxl_jax.text.constants import DEFAULT_SYSTEM
from vxl_jax.text.prompt import chat_prompt, check_question, tokenizer_image_token

LETTERS = "ABCDEFGHIJ"
WATCH_SYSTEM = ("Carefully watch this video and pay attention to every detail. Based on your observations, "
                "select the best option that accurately addresses the question.")
DIRECT_LETTER = "Answer with the option's letter from the given choices directly."


def letter(i: int) -> str:
    if not 0 <= i < len(LETTERS):
        raise ValueError(f"option index {i} out of range: at most {len(LETTERS)} options are supported")
    return LETTERS[i]


def _paren_options(options: Sequence[str]) -> str:
    return "\n".join(f"({letter(i)}) {o}" for i, o in enumerate(options))


def _dot_options(options: Sequence[str]) -> str:
    return "\n".join(f"{letter(i)}. {o}" for i, o in enumerate(options))


def mlvu_user(question: str, options: Sequence[str]) -> str:
    """MLVU's dev evaluation: ``Question: ..`` / ``Options:`` / ``(A) ..`` lines, then ``Only give the best option.``"""
    return f"Question: {question}\nOptions:\n{_paren_options(options)}\nOnly give the best option."


def videomme_user(question: str, options: Sequence[str]) -> str:
    """Video-MME's frames-only prompt (lmms-eval): instruction, question, ``A. ..`` lines, ``The best answer is:``."""
    letters = ", ".join(LETTERS[:len(options) - 1]) + f", or {LETTERS[len(options) - 1]}" if len(options) > 1 else "A"
    return (f"Select the best answer to the following multiple-choice question based on the video. Respond with "
            f"only the letter ({letters}) of the correct option.\n{question}\n{_dot_options(options)}\n"
            f"The best answer is:")


def longvideobench_user(question: str, options: Sequence[str]) -> str:
    """LongVideoBench's video-only prompt (lmms-eval): question, ``A. ..`` lines, answer-with-the-letter instruction."""
    return f"{question}\n{_dot_options(options)}\n{DIRECT_LETTER}"


def niah_user(question: str, options: Sequence[str]) -> str:
    """The needle test's prompt: ``Question: ..`` / ``Options:`` / ``(A) ..`` lines, answer-with-the-letter instruction."""
    return f"Question: {question}\nOptions:\n{_paren_options(options)}\n{DIRECT_LETTER}"


def vnbench_user(question: str, options: Sequence[str]) -> str:
    """Video-XL's ``eval/eval_vnbench.py``: ``Question: ..`` / ``Options:`` / ``(A) ..`` lines and a final newline."""
    return f"Question: {question}\nOptions:\n{_paren_options(options)}\n"


def mvbench_user(question: str, options: Sequence[str]) -> str:
    """MVBench as lmms-eval asks it: ``Question:..`` / ``Option:`` / ``(A) ..`` lines, answer-with-the-letter."""
    return f"Question:{question}\nOption:\n{_paren_options(options)}\n{DIRECT_LETTER}"


def nextqa_user(question: str, options: Sequence[str]) -> str:
    """NExT-QA multiple choice as lmms-eval asks it: the question, then ``A. ..`` lines (no instruction)."""
    return f"{question}\n{_dot_options(options)}"


@dataclasses.dataclass(frozen=True)
class PromptStyle:
    """How one benchmark asks: system prompt, user text builder, start of the assistant's answer."""

    name: str
    system: str
    user: Callable[[str, Sequence[str]], str]
    answer_prefix: str = ""  # appended after ``<|im_start|>assistant\n`` (MLVU: "Best Option: (")


STYLES = {
    "mlvu": PromptStyle("mlvu", WATCH_SYSTEM, mlvu_user, "Best Option: ("),
    "videomme": PromptStyle("videomme", DEFAULT_SYSTEM, videomme_user),
    "longvideobench": PromptStyle("longvideobench", DEFAULT_SYSTEM, longvideobench_user),
    "niah": PromptStyle("niah", DEFAULT_SYSTEM, niah_user),
    "vnbench": PromptStyle("vnbench", WATCH_SYSTEM, vnbench_user),
    "mvbench": PromptStyle("mvbench", DEFAULT_SYSTEM, mvbench_user),
    "nextqa": PromptStyle("nextqa", DEFAULT_SYSTEM, nextqa_user),
}


def chat_text(style: PromptStyle, question: str, options: Sequence[str]) -> str:
    """The whole ChatML prompt with one ``<image>`` placeholder, ending where the model starts answering."""
    return chat_prompt(check_question(style.user(question, options)), style.system) + style.answer_prefix


def prompt_ids(style: PromptStyle, question: str, options: Sequence[str], tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """-> (full ids with one -200, ids of the text after the video). The text after the video is what a saved
    video memory is asked with; the ids before it (system prompt) are the same for every question of a style."""
    ids = tokenizer_image_token(chat_text(style, question, options), tokenizer)
    after = ids[int(np.flatnonzero(ids < 0)[0]) + 1:]
    return ids, after


# ---------------------------------------------------------------------------- letter parsing

_ANSWER_PREFIXES = ("the best answer is", "the correct answer is", "the answer is", "the best option is",
                    "the correct option is", "best answer:", "best option:", "answer:", "option:")


def parse_letter(text: str, options: Sequence[str]) -> str | None:
    """The option letter an answer names, or None when it names none (or only letters past the options).

    Tried in order: a letter opening the answer (``B``, ``B.``, ``(B) green``, ``B) green`` (MLVU's prompt
    ends with ``(``), ``B: ..``, after "The best answer is" and similar); a parenthesised letter ``(B)``
    anywhere; "answer/option (is) B"; the one option whose text the answer contains; a standalone capital
    letter word. An opening "A"/"I" followed by a lower-case word is read as an English word, not a letter.
    """
    valid = LETTERS[:len(options)]
    if not valid or text is None:
        return None
    s = text.strip()
    low = s.lower()
    for p in _ANSWER_PREFIXES:  # drop a leading answer phrase ("The best answer is (C).")
        if low.startswith(p):
            s = s[len(p):].strip()
            low = s.lower()
            break
    m = re.match(r"^[\s(\[\"'*]*([A-J])(?=$|[\s.):\],;\"'*])", s)
    if m and m.group(1) in valid:
        rest = s[m.end():]
        article = m.group(1) in "AI" and re.match(r"^\s+[a-z]", rest) is not None
        if not article:
            return m.group(1)
    m = re.search(r"\(([A-J])\)", s)
    if m and m.group(1) in valid:
        return m.group(1)
    m = re.search(r"(?i:answer|option)\s*(?i:is)?\s*[:\-]?\s*\(?([A-J])\b", s)
    if m and m.group(1) in valid:
        return m.group(1)
    hits = [i for i, o in enumerate(options) if str(o).strip() and str(o).strip().lower() in low]
    if len(hits) == 1:
        return valid[hits[0]]
    for m in re.finditer(r"(?<![A-Za-z'])([A-J])(?![A-Za-z'])", s):
        if m.group(1) not in valid:
            continue
        if m.group(1) in "AI" and re.match(r"^\s+[a-z]", s[m.end():]):
            continue  # an article / pronoun
        return m.group(1)
    return None


# ---------------------------------------------------------------------------- log-likelihood scoring

def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def letter_token_ids(tokenizer, n: int) -> list[int]:
    """The single token of each of the first ``n`` letters (ValueError if a letter is not one distinct token)."""
    ids = []
    for ch in LETTERS[:n]:
        toks = tokenizer(ch, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise ValueError(f"letter {ch!r} is {len(toks)} tokens for this tokenizer; letter scoring needs one")
        ids.append(int(toks[0]))
    if len(set(ids)) != n:
        raise ValueError("the option letters do not map to distinct tokens")
    return ids


def next_token_logprobs(vx, memory, text_ids: np.ndarray) -> np.ndarray:
    """log p(next token | video memory, text) as float64 [vocab] (one text step over the saved memory)."""
    return _log_softmax(vx.score(np.asarray(text_ids, np.int32), memory=memory)[-1])


def letter_logprobs(vx, memory, text_ids: np.ndarray, n_options: int) -> np.ndarray:
    """log p(letter_i | video, prompt) for each option -> float64 [n_options]."""
    lp = next_token_logprobs(vx, memory, text_ids)
    return lp[letter_token_ids(vx.tokenizer, n_options)]


def text_logprobs(vx, memory, text_ids: np.ndarray, options: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sum of log p(option text tokens | video, prompt) for each option (teacher-forced: every option is one row
    of a single batched ``vx.score`` call over the memory) -> (float64 [n_options] sums, int [n_options] counts)."""
    prompt = np.asarray(text_ids, np.int32)
    if not len(prompt):
        raise ValueError("option scoring needs the prompt text before the options")
    conts = []
    for opt in options:
        cont = np.asarray(vx.tokenizer(str(opt), add_special_tokens=False)["input_ids"], np.int32)
        if not len(cont):
            raise ValueError(f"option {opt!r} has no tokens")
        conts.append(cont)
    logits = vx.score([np.concatenate([prompt, c]) for c in conts], memory=memory)
    sums = []
    for lg, cont in zip(logits, conts):
        # the logits at position p predict token p + 1: option token k follows prompt + cont[:k]
        lp = _log_softmax(lg[len(prompt) - 1:len(prompt) - 1 + len(cont)])
        sums.append(float(lp[np.arange(len(cont)), cont].sum()))
    return np.asarray(sums), np.asarray([len(c) for c in conts])
