"""The OpenAI-compatible video Q&A server (``python -m vxl_jax.serve``): the scheduler (continuous batching over
decode rows, the encoded-video cache) and the HTTP layer over it."""
