#!/usr/bin/env python
"""Convert a released Video-XL PyTorch checkpoint to our format (or back with --to-torch).

    python convert_weights.py --src HF_DIR --dst OUT_DIR [--dtype bfloat16|float32]
                              [--vision-config CLIP_CONFIG.json] [--init-beacon]
    python convert_weights.py --to-torch --src OUT_DIR --dst HF_DIR [--dtype ...]

Errors in the input (missing/extra/mis-shaped tensors, missing shards, truncated files...) are
reported in one message and nothing is written; the exit status is then 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    # Orbax (reading our folders) wants absolute paths: resolve relative ones against the current directory.
    args.src, args.dst = os.path.abspath(args.src), os.path.abspath(args.dst)
    if args.vision_config:
        args.vision_config = os.path.abspath(args.vision_config)

    from vxl_jax.config import ConfigError
    from vxl_jax.convert import ConversionError, convert, export_torch

    try:
        if args.to_torch:
            if args.vision_config or args.init_beacon:
                raise ConversionError("--vision-config/--init-beacon apply to torch -> ours only")
            summary = export_torch(args.src, args.dst, dtype=args.dtype,
                                   max_shard_bytes=int(args.max_shard_gb * (1 << 30)), progress=not args.quiet)
        else:
            summary = convert(args.src, args.dst, dtype=args.dtype, vision_config=args.vision_config,
                              init_beacon=args.init_beacon, progress=not args.quiet)
    except (ConversionError, ConfigError) as e:  # one message (it may list every offending tensor)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # anything else that reaches here (e.g. from Orbax): one line, no traceback
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    if summary["direction"] == "torch->jax":
        line = (f"converted {summary['source_tensors']} tensors ({summary['source_format']}) into "
                f"{summary['parameter_arrays']} arrays, {summary['parameters']:,} parameters, "
                f"{_human(summary['written_bytes'])} {summary['dtype']}")
    else:
        line = (f"exported {summary['tensors']} tensors in {len(summary['shards'])} safetensors file(s), "
                f"{_human(summary['bytes'])} {summary['dtype']}")
    print(f"{line} in {summary['seconds']:.1f} s -> {args.dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
