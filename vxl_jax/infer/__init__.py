"""Inference: the batched core over the model and its memory, the ``VideoXL`` facade, sessions, memory files."""
