"""Convert a released Video-XL PyTorch checkpoint to our format (or back with --to-torch).

    python convert_weights.py --src HF_DIR --dst OUT_DIR [--dtype bfloat16|float32]
                              [--vision-config CLIP_CONFIG.json] [--init-beacon]
    python convert_weights.py --to-torch --src OUT_DIR --dst HF_DIR [--dtype ...]

Errors in the input (missing/extra/mis-shaped tensors, missing shards, truncated files...) are
reported in one message and nothing is written; the exit status is then 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from vxl_jax.runtime.cli_args import OneLineParser


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; relative paths made absolute (Orbax, reading our folders, wants absolute paths)."""
    ap = OneLineParser(prog="convert_weights.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="source folder")
    ap.add_argument("--dst", required=True, help="destination folder (must not exist or be empty)")
    ap.add_argument("--dtype", choices=["bfloat16", "float32", "float16"], default=None,
                    help="stored dtype (default: bfloat16 if the source is all bf16, else float32; "
                         "--to-torch: the stored dtype)")
    ap.add_argument("--vision-config", default=None, help="CLIP (vision) config.json to use")
    ap.add_argument("--init-beacon", action="store_true",
                    help="plain Qwen2/LLaVA checkpoint: initialise beacon q/k/v from q/k/v and the beacon "
                         "embedding from the eos row")
    ap.add_argument("--to-torch", action="store_true", help="reverse: our folder -> released PyTorch layout")
    ap.add_argument("--max-shard-gb", type=float, default=5.0, help="--to-torch shard size")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    args.src, args.dst = os.path.abspath(args.src), os.path.abspath(args.dst)
    if args.vision_config:
        args.vision_config = os.path.abspath(args.vision_config)
    return args


def main(argv=None) -> int:
    """``convert_weights.py``: the summary (JSON) on stdout -> 0; bad input -> one message on stderr and 2."""
    args = parse_args(argv)
    # The CLI's one lazy import: the converter stack (orbax, tensorstore, transformers) is loaded after the
    # arguments are parsed, so --help and usage errors load none of it (tests/test_imports.py).
    from vxl_jax.cli import convert_run

    return convert_run.run(args)


if __name__ == "__main__":
    sys.exit(main())
