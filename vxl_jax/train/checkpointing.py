"""Train-state checkpoints of a training run (params, optimizer, step, RNG + data-iterator state), with Orbax;
restore onto any mesh. (The model a run exports, and ``infer.py --model`` loads, is a converted folder:
:mod:`vxl_jax.convert.folder`.)

Each step directory holds ``state`` (params, frozen params, optimizer state, step, RNG key;
StandardSave) and ``data`` (the loader's JSON state). Restoring uses ShapeDtypeStructs that
carry the *current* mesh's shardings, so a run saved on 8 devices resumes on 1 (or any mesh).
"""

from __future__ import annotations

import logging
import os

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpoints:
    """Thin wrapper over ``ocp.CheckpointManager`` (async saves, keep-N)."""

    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(directory)
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
        self.mngr = ocp.CheckpointManager(self.directory, options=opts)

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def save(self, step: int, state: dict, data_state: dict | None, force: bool = False) -> bool:
        if step in self.mngr.all_steps():
            return False
        args = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            args["data"] = ocp.args.JsonSave(data_state)
        saved = self.mngr.save(step, args=ocp.args.Composite(**args), force=force)
        if saved:
            log.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def restore(self, abstract_state: dict, step: int | None = None) -> tuple[dict, dict | None, int]:
        """-> (state placed per ``abstract_state``'s shardings, data state or None, step)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        # (item_metadata() reports None for items without a registered handler: look at the folder)
        has_data = os.path.isdir(os.path.join(self.directory, str(step), "data"))
        if has_data:
            args["data"] = ocp.args.JsonRestore()
        out = self.mngr.restore(step, args=ocp.args.Composite(**args))
        return out["state"], (out["data"] if has_data else None), step

    def close(self):
        self.mngr.wait_until_finished()
        self.mngr.close()
