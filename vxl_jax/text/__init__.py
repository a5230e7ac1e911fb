"""Text: token constants, ChatML prompts, the tiny tokenizer."""
