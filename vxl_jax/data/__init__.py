"""Training data: LLaVA-style JSON records -> padded fixed-shape batches (Grain pipeline).

Modules: ``records`` (load/validate JSON), ``conversation`` (ChatML ids + label mask),
``frames`` (1-fps video sampling capped at ``frames_upbound``), ``pipeline`` (Grain loader,
bad-record skipping, resumable state), ``synthetic`` (a small self-made dataset, no download).
"""
