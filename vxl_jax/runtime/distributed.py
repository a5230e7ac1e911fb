"""Multi-process (multi-host) start-up: ``jax.distributed.initialize`` from flags or environment variables.

One process per host (TPU VM worker, GPU node), all running the same command; each sees its local
devices, and ``jax.devices()`` lists the devices of every process. ``train.py --coordinator/--num-processes
/--process-id`` pass the launch settings to :func:`maybe_initialize` as arguments; without them it reads the
environment variables:

    JAX_COORDINATOR_ADDRESS=host0:8476   process 0's host and a free port (every process the same)
    JAX_NUM_PROCESSES=2                  number of processes
    JAX_PROCESS_ID=0                     this process, 0 .. N-1
    VXL_DISTRIBUTED=1 | 0                force / forbid initialisation (default: decided from the above)

On Cloud TPU slices, SLURM (> 1 task) and Open MPI (> 1 rank) JAX finds all three by itself: nothing
needs to be set. On CPU (tests, this machine), cross-process collectives go through gloo
(``jax_cpu_collectives_implementation``; ``VXL_CPU_COLLECTIVES=mpi`` picks MPI) and
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` gives each process 4 fake devices.
Everything here must run before the first JAX computation (the backend is created once).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax

log = logging.getLogger(__name__)

ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


def launcher(env: Mapping[str, str]) -> str | None:
    """Name of the multi-process launcher detected in ``env``, else None (a single process)."""
    def count(key):
        try:
            return int(env.get(key, "1"))
        except ValueError:
            return 1

    if env.get(ENV_COORDINATOR):
        return ENV_COORDINATOR
    if "SLURM_JOB_ID" in env and count("SLURM_NTASKS") > 1:
        return "slurm"
    if count("OMPI_COMM_WORLD_SIZE") > 1:
        return "openmpi"
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "cloud_tpu"
    return None


def maybe_initialize(enable: bool | None = None, *, coordinator_address: str | None = None,
                     num_processes: int | None = None, process_id: int | None = None,
                     env: Mapping[str, str] | None = None) -> bool:
    """Call ``jax.distributed.initialize`` only for multi-process runs; returns whether JAX is initialised.

    ``enable``: True forces it, False skips it, None (default) decides: explicit arguments,
    ``VXL_DISTRIBUTED=1|0``, ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``),
    SLURM with > 1 task, Open MPI with > 1 rank, or a multi-host Cloud TPU slice. A single process
    (tests, one GPU box) never initialises.
    """
    env = os.environ if env is None else env
    if jax.distributed.is_initialized():
        return True
    flag = env.get("VXL_DISTRIBUTED")
    if enable is None and flag is not None:
        enable = flag.strip().lower() in ("1", "true", "yes")
    if enable is False:
        return False
    explicit = coordinator_address is not None or num_processes is not None
    reason = "forced" if enable else "arguments" if explicit else launcher(env)
    if reason is None:
        return False
    kwargs: dict[str, Any] = {}
    coordinator_address = coordinator_address or env.get(ENV_COORDINATOR) or None
    if coordinator_address:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes is None and env.get(ENV_NUM_PROCESSES):
        num_processes = int(env[ENV_NUM_PROCESSES])
    if process_id is None and env.get(ENV_PROCESS_ID):
        process_id = int(env[ENV_PROCESS_ID])
    if num_processes is not None:
        kwargs["num_processes"] = num_processes
    if process_id is not None:
        kwargs["process_id"] = process_id
    # CPU devices of different processes talk through gloo (or MPI); ignored by TPU / GPU backends.
    jax.config.update("jax_cpu_collectives_implementation", env.get("VXL_CPU_COLLECTIVES", "gloo"))
    log.info("jax.distributed.initialize (%s) %s", reason, kwargs)
    jax.distributed.initialize(**kwargs)
    return True


def process_rows(sharding, global_shape, axis: int = 0) -> int:
    """How many distinct indices along ``axis`` of an array ``global_shape`` placed with ``sharding`` live on
    this process's devices (what ``jax.make_array_from_process_local_data`` expects it to load)."""
    rows: set[int] = set()
    for index in sharding.addressable_devices_indices_map(tuple(global_shape)).values():
        rows.update(range(*index[axis].indices(global_shape[axis])))
    return len(rows)


def check_process_batch(sharding, global_shape, local_rows: int, axis: int = 1) -> None:
    """Raise a ValueError naming the fix when this process's ``local_rows`` are not the rows the batch
    sharding puts on its devices (e.g. a batch not split over the processes, or split unevenly)."""
    want = process_rows(sharding, global_shape, axis)
    if local_rows not in (want, global_shape[axis]):
        sizes = " ".join(f"{k}={v}" for k, v in sharding.mesh.shape.items())
        raise ValueError(
            f"process {jax.process_index()} of {jax.process_count()} loads {local_rows} of the {global_shape[axis]} "
            f"batch rows, but the mesh ({sizes}) places {want} rows on its devices: make train.batch_size a "
            f"multiple of data x fsdp that splits evenly over the processes")
