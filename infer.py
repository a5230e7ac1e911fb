"""Answer a question about a video (see `python infer.py --help`). Entry point only: the command lives in :mod:`vxl_jax.cli.infer`."""

import sys

from vxl_jax.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
