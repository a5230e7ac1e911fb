"""Convert checkpoints between the released PyTorch layout and vxl-jax (see `python convert_weights.py --help`). Entry point only: the command lives in :mod:`vxl_jax.cli.convert`."""

import sys

from vxl_jax.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
