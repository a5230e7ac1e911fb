"""Train Video-XL (beacon compression) with Optax on a device mesh; Orbax checkpoints; Grain video data.

    python train.py --config configs/tiny.yaml                         # short demo run, synthetic data
    python train.py --config configs/train_tiny.yaml train.steps=300    # key=value overrides
    python train.py --config my.yaml data.train=data/train.json data.video_folder=data/videos \\
        checkpoint.init_from=converted/videoxl_7b train.trainable=projector   # stage 1 style

Sections ``train``/``data``/``checkpoint`` of the preset are described in vxl_jax/train/config.py.
The run resumes from ``<workdir>/checkpoints`` when it exists, and exports the final model to
``<workdir>/export`` (a converted folder for ``infer.py --model``). SIGTERM checkpoints and exits.
Multi-process (one command per host, see vxl_jax/runtime/distributed.py): add ``--coordinator host0:8476
--num-processes N --process-id I`` (or set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
A run that already reached ``train.steps`` trains nothing and keeps its export (raise ``train.steps``
to continue it, or pass ``--re-export`` to write the export again from its last checkpoint).
"""

from __future__ import annotations

import argparse
import logging
import sys

from vxl_jax.config import ConfigError
from vxl_jax.runtime.cli_args import OneLineParser
from vxl_jax.train.loop import run


def main(argv=None) -> int:
    p = OneLineParser(prog="train.py", description=__doc__.split("\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--config", default="configs/tiny.yaml", help="preset YAML (default: configs/tiny.yaml)")
    p.add_argument("--export", default=None, help="write the final model here (default: <workdir>/export)")
    p.add_argument("--re-export", action="store_true",
                   help="the run already finished: write its export again from the last checkpoint")
    p.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="multi-process run: process 0's address (every process the same; env JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=int, default=None, help="multi-process run: number of processes "
                                                                   "(env JAX_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, default=None, help="multi-process run: this process, 0..N-1 "
                                                               "(env JAX_PROCESS_ID)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=50 runtime mesh: "
                                                "model.runtime.mesh.fsdp=4")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run(args.config, args.overrides, export=args.export, re_export=args.re_export,
                      coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"train.py: error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2
    last = summary.get("last") or {}
    if summary.get("already_finished"):
        export = summary.get("export")
        print(f"nothing to do: the run in {summary['workdir']} already finished (checkpoint at step "
              f"{summary['final_step']}, train.steps={summary['steps']})"
              + (f", last loss {last['loss']:.4f}" if "loss" in last else "")
              + (f"; its export {export} is unchanged (--re-export writes it again)" if export else "")
              + f". To train further, raise train.steps (e.g. train.steps={summary['steps'] * 2}).")
        return 0
    loss = f", loss {last['loss']:.4f}" if "loss" in last else ""
    print(f"done: step {summary['final_step']}{loss}"
          + (f", eval loss {summary['eval_loss']:.4f}" if "eval_loss" in summary else "")
          + f", {summary['train_time_s']:.1f}s; checkpoints in {summary['checkpoints']}; metrics {summary['metrics']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
