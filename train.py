"""Train Video-XL (see `python train.py --help`). Entry point only: the command lives in :mod:`vxl_jax.cli.train`."""

import sys

from vxl_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
