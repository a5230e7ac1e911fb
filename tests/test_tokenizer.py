"""Tiny tokenizer (fixed special ids, save/load offline) and prompt -> ids with the -200 placeholder."""

import numpy as np
import pytest

from vxl_jax.text.constants import IMAGE_TOKEN_INDEX
from vxl_jax.text.prompt import (PromptError, chat_prompt, question_ids, suffix_ids, suffix_text, tokenizer_image_token)
from vxl_jax.text.tokenizer import TINY_VOCAB_SIZE, bytes_to_unicode, build_tiny_tokenizer, learn_bpe, make_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_special_ids_match_the_tiny_config(tok, tiny_cfg):
    ids = tok.convert_tokens_to_ids(["<unk>", "<|endoftext|>", "<|im_end|>", "<|im_start|>"])
    assert ids == [0, 1, 2, 3]
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 == tiny_cfg.lm.eos_token_id
    assert tok.pad_token_id == 1 == tiny_cfg.lm.bos_token_id
    assert len(tok) == TINY_VOCAB_SIZE <= tiny_cfg.lm.vocab_size - 1  # id 511 (placeholder row) stays unused
    assert max(tok.get_vocab().values()) == TINY_VOCAB_SIZE - 1
    # specials are atomic and never split, and ordinary text never produces them
    enc = tok("<|im_start|>user<|im_end|>", add_special_tokens=False)["input_ids"]
    assert enc[0] == 3 and enc[-1] == 2 and all(i > 3 for i in enc[1:-1])
    assert all(i > 3 for i in tok("<|im_start plain text |>", add_special_tokens=False)["input_ids"])


def test_byte_layout():
    from tokenizers.pre_tokenizers import ByteLevel

    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and set(table.values()) == set(ByteLevel.alphabet())
    vocab, merges = learn_bpe("")
    assert [vocab[table[b]] for b in range(256)] == list(range(4, 260)) and merges == []


def test_deterministic_and_round_trip(tok):
    fresh = make_tiny_tokenizer()
    assert fresh.get_vocab() == tok.get_vocab()
    for text in ["What is happening in the video?", "Héllo wörld — 你好 🎥\t\n  x", "", " leading space",
                 "a\r\nb", "x" * 300]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert all(0 <= i < TINY_VOCAB_SIZE for i in ids)
    # merges compress the words of the built-in corpus
    assert len(tok("You are a helpful assistant.", add_special_tokens=False)["input_ids"]) < 12


def test_decode_skips_specials_and_ids_outside_the_tokenizer(tok):
    ids = tok("the video", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids + [2, 1], skip_special_tokens=True) == "the video"
    # the tiny model has 512 rows: ids 500..511 exist in its logits but not in the tokenizer
    assert tok.decode(ids + [505, 511], skip_special_tokens=True) == "the video"


def test_save_and_reload_offline(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert type(again).__name__ == "Qwen2Tokenizer"
    prompt = chat_prompt("What colour is the square?")
    np.testing.assert_array_equal(tokenizer_image_token(prompt, again), tokenizer_image_token(prompt, tok))
    assert again.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>", "<|im_start|>"]) == [1, 2, 3]
    assert again.eos_token_id == 2 and len(again) == len(tok)


def test_chat_prompt_text():
    assert chat_prompt("Q?") == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                                 "<image>\nQ?<|im_end|>\n<|im_start|>assistant\n")
    assert "<image>" not in chat_prompt("Q?", with_video=False)
    assert chat_prompt("Q?", system="S").startswith("<|im_start|>system\nS<|im_end|>\n")
    assert suffix_text("Q?") == "\nQ?<|im_end|>\n<|im_start|>assistant\n"


def test_placeholder_sits_right_after_the_prefix(tok):
    prompt = chat_prompt("What happens at the end?")
    ids = tokenizer_image_token(prompt, tok)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert (ids == IMAGE_TOKEN_INDEX).sum() == 1
    pos = int(np.flatnonzero(ids == IMAGE_TOKEN_INDEX)[0])
    prefix = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    prefix_ids = tok(prefix, add_special_tokens=False)["input_ids"]
    assert pos == len(prefix_ids) and ids[:pos].tolist() == prefix_ids
    assert prefix_ids[0] == 3 and tok.convert_ids_to_tokens(prefix_ids[-1]) == "Ċ"  # ... user \n
    # the text after the placeholder is tokenized on its own: exactly suffix_ids (used with a saved memory)
    np.testing.assert_array_equal(ids[pos + 1:], suffix_ids("What happens at the end?", tok))
    np.testing.assert_array_equal(ids, question_ids("What happens at the end?", tok))
    assert ids[-1] == tok("\n", add_special_tokens=False)["input_ids"][0]


def test_chunks_are_tokenized_separately(tok):
    # "ab<image>cd": the chunks must not merge across the placeholder
    ids = tokenizer_image_token("ab<image>cd", tok)
    assert ids.tolist() == (tok("ab", add_special_tokens=False)["input_ids"] + [IMAGE_TOKEN_INDEX]
                            + tok("cd", add_special_tokens=False)["input_ids"])
    assert tokenizer_image_token("<image>\nQ", tok)[0] == IMAGE_TOKEN_INDEX  # placeholder first
    assert IMAGE_TOKEN_INDEX not in tokenizer_image_token("no video here", tok)  # text only


def test_two_placeholders_are_an_error(tok):
    with pytest.raises(PromptError, match="2 <image> placeholders"):
        tokenizer_image_token(chat_prompt("what is in <image> here?"), tok)
    with pytest.raises(PromptError, match="two placeholders"):
        question_ids("compare <image> with this", tok)
    with pytest.raises(PromptError, match="placeholder"):
        suffix_ids("<image>", tok)
    with pytest.raises(PromptError, match="empty"):
        question_ids("  ", tok)
    assert issubclass(PromptError, ValueError)
