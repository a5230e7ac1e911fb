"""Token-level constants shared by prompts, training data and the model API (docs/algorithm.md §2, §8)."""

IMAGE_TOKEN_INDEX = -200  # the id that stands for the video (or image) in a prompt's token ids
IMAGE_PLACEHOLDER = "<image>"  # the same, in prompt text
IGNORE_INDEX = -100  # a label that is not scored
DEFAULT_SYSTEM = "You are a helpful assistant."  # the system prompt of the original's qwen_1_5 template
