"""Training: optimizer (``optim``), jitted sharded train/eval steps (``step``), Orbax checkpoints
(``checkpointing``), the run loop and metrics (``loop``), and the train/data/checkpoint config (``config``)."""
