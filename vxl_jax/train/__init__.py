"""The training run (the library side of ``train.py``): optimizer (``optim``), jitted sharded train/eval steps
(``step``), train-state checkpoints (``checkpointing``; the exported model is a converted folder,
:mod:`vxl_jax.convert.folder`), the run loop and metrics (``loop``), and the train/data/checkpoint config
(``config``). The loss itself, a function of the model, is :mod:`vxl_jax.beacon.train`."""
