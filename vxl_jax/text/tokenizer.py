"""A tiny offline byte-level BPE tokenizer (Qwen2 style) for the embedded demo model and tests.

Matches configs/tiny.yaml (vocab 512, bos 1, eos 2):

    id 0  <unk>            (never produced: byte-level BPE covers every input)
    id 1  <|endoftext|>    (pad; bos of the tiny config)
    id 2  <|im_end|>       (eos)
    id 3  <|im_start|>
    4..259                 the 256 bytes (GPT-2 byte-to-unicode alphabet, in byte order)
    260..                  merges learned deterministically from a small built-in English corpus

Total size ``TINY_VOCAB_SIZE`` (500); ids 500..511 of the tiny model (511 = the image-placeholder row)
are not in the tokenizer. It is a transformers ``Qwen2Tokenizer`` (tokenizers backend): it saves with
``save_pretrained`` and reloads offline with ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import collections
import functools

TINY_VOCAB_SIZE = 500
SPECIAL_TOKENS = ("<unk>", "<|endoftext|>", "<|im_end|>", "<|im_start|>")

_CORPUS = """\
<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
What is happening in the video? Describe the video in detail.<|im_end|>
<|im_start|>assistant
The video shows a red square moving from the left to the right of the screen, while a blue circle
moves down. A green bar at the bottom grows longer as time passes. There is a counter at the top of
every frame. The camera does not move and the background is a smooth colour gradient.
Question: how many people are in the video? Answer: there are no people in the video.
Question: what colour is the square? Answer: the square is red.
Question: what happens at the end of the video? Answer: the square reaches the right side of the frame.
Please answer the question about the video with a short sentence. Summarise the main events in order,
then say where and when each one happens. The man opens the door, walks into the kitchen and makes
some tea. A woman is reading a book in the park, and a dog is running on the grass near the water.
The first part of the video is about cooking; the second part is about a game of football.
"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte -> printable unicode character table (the ByteLevel pre-tokenizer alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _pretokenize(text: str) -> list[str]:
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    text = normalizers.NFC().normalize_str(text)
    return [piece for piece, _ in pre.pre_tokenize_str(text)]


def learn_bpe(text: str, vocab_size: int = TINY_VOCAB_SIZE) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Deterministic BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair)
    until ``vocab_size`` tokens or no pair is left.

    Returns (vocab token -> id, merges in rank order). Special tokens are removed from ``text`` first.
    """
    for tok in SPECIAL_TOKENS:
        text = text.replace(tok, " ")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b, ch in sorted(bytes_to_unicode().items()):
        vocab[ch] = len(vocab)
    words = collections.Counter(tuple(w) for w in _pretokenize(text))
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        pairs: collections.Counter = collections.Counter()
        for word, n in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = best[0] + best[1]
        merges.append(best)
        vocab.setdefault(merged, len(vocab))
        new_words: collections.Counter = collections.Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += n
        words = new_words
    return vocab, merges


@functools.lru_cache(maxsize=1)
def _vocab_and_merges():
    return learn_bpe(_CORPUS)


def make_tiny_tokenizer():
    """A fresh tiny ``Qwen2Tokenizer`` (see the module docstring for the id layout)."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = _vocab_and_merges()
    tok = Qwen2Tokenizer(
        vocab=dict(vocab), merges=[tuple(m) for m in merges], unk_token="<unk>", bos_token=None,
        eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=32768,
    )
    tok.add_special_tokens({"additional_special_tokens": [AddedToken("<|im_start|>", special=True),
                                                           AddedToken("<|im_end|>", special=True)]})
    for i, t in enumerate(SPECIAL_TOKENS):
        got = tok.convert_tokens_to_ids(t)
        if got != i:  # pragma: no cover - guards the fixed layout the tiny config relies on
            raise RuntimeError(f"tiny tokenizer: {t} got id {got}, expected {i}")
    if len(tok) > TINY_VOCAB_SIZE:  # pragma: no cover
        raise RuntimeError(f"tiny tokenizer has {len(tok)} tokens, more than {TINY_VOCAB_SIZE}")
    return tok


@functools.lru_cache(maxsize=1)
def build_tiny_tokenizer():
    """The tiny tokenizer, built once per process (shared instance: do not mutate it)."""
    return make_tiny_tokenizer()
