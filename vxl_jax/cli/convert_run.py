"""``convert_weights.py`` after its arguments are parsed (:mod:`vxl_jax.cli.convert`): run the conversion, print
its summary (JSON on stdout, one line on stderr), or report bad input as one message and exit status 2."""

from __future__ import annotations

import argparse
import json
import sys

from vxl_jax.config import ConfigError
from vxl_jax.convert import ConversionError, convert, export_torch


def run(args: argparse.Namespace) -> int:
    """torch -> ours (or ours -> torch with ``--to-torch``) -> exit status (0, or 2 for bad input)."""
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
    print(f"{summary_line(summary)} in {summary['seconds']:.1f} s -> {args.dst}", file=sys.stderr)
    return 0


def summary_line(summary: dict) -> str:
    """What was converted, in one line (without the time and destination)."""
    if summary["direction"] == "torch->jax":
        return (f"converted {summary['source_tensors']} tensors ({summary['source_format']}) into "
                f"{summary['parameter_arrays']} arrays, {summary['parameters']:,} parameters, "
                f"{_human(summary['written_bytes'])} {summary['dtype']}")
    return (f"exported {summary['tensors']} tensors in {len(summary['shards'])} safetensors file(s), "
            f"{_human(summary['bytes'])} {summary['dtype']}")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"
