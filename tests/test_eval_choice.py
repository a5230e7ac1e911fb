"""Multiple-choice prompts and letter parsing (the generated answer -> the option letter it names)."""

import pytest

from vxl_jax.eval.choice import STYLES, chat_text, letter_token_ids, parse_letter

OPTS4 = ["A man opens the door", "blue", "green", "It is raining"]


@pytest.mark.parametrize("text,want", [
    ("B", "B"), ("B.", "B"), (" (C) green", "C"), ("C) green", "C"),   # MLVU: the prompt ends with "("
    ("D: It is raining", "D"), ("**B**", "B"), ("[D]", "D"),
    ("The best answer is C.", "C"), ("The correct answer is (D) It is raining.", "D"),
    ("Best option: (B) blue", "B"), ("Answer: A", "A"),
    ("I think the answer is B because the sky is blue.", "B"),       # "I" is a pronoun, not option I
    ("A man opens the door.", "A"),                                  # the option's text
    ("A man walks in and it is green outside", "C"),                 # article "A" skipped; one option's text
    ("green", "C"), ("The video shows green leaves", "C"),
    ("Option B", "B"), ("option (b)?", None),                         # lower-case letters are words, not options
    ("E", None), ("(E) none of these", None),                        # past the four options
    ("", None), ("I don't know", None), ("A man walks into a bar", None),
    ("It is raining; the answer is D", "D"),
])
def test_parse_letter(text, want):
    assert parse_letter(text, OPTS4) == want


def test_parse_letter_five_options():
    assert parse_letter("E", ["a", "b", "c", "d", "e"]) == "E"
    assert parse_letter("(E)", ["a", "b", "c", "d", "e"]) == "E"
    assert parse_letter("B", []) is None


def test_prompt_styles_follow_the_reference_evaluations():
    mlvu = chat_text(STYLES["mlvu"], "What color is the bulldog?", ["Yellow", "Gray"])
    assert mlvu.startswith("<|im_start|>system\nCarefully watch this video")
    assert mlvu.endswith("<image>\nQuestion: What color is the bulldog?\nOptions:\n(A) Yellow\n(B) Gray\n"
                         "Only give the best option.<|im_end|>\n<|im_start|>assistant\nBest Option: (")
    mme = chat_text(STYLES["videomme"], "Why?", ["x", "y", "z", "w"])
    assert "Respond with only the letter (A, B, C, or D) of the correct option.\nWhy?\nA. x\nB. y\nC. z\nD. w\n" \
           "The best answer is:<|im_end|>\n<|im_start|>assistant\n" in mme
    lvb = chat_text(STYLES["longvideobench"], "Q?", ["x", "y", "z", "w", "v"])
    assert lvb.endswith("Q?\nA. x\nB. y\nC. z\nD. w\nE. v\nAnswer with the option's letter from the given "
                        "choices directly.<|im_end|>\n<|im_start|>assistant\n")
    assert chat_text(STYLES["niah"], "Q?", ["r", "g"]).count("<image>") == 1


def test_letter_tokens_are_single_and_distinct():
    from vxl_jax.text.tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    ids = letter_token_ids(tok, 5)
    assert len(set(ids)) == 5
    assert [tok.decode([i]) for i in ids] == list("ABCDE")
