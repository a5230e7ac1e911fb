"""The training run: config -> data, model, sharded state -> steps with metrics, eval, checkpoints, export.

    summary = run("configs/train_tiny.yaml", ["train.steps=50"])

Metrics go to stdout (a tqdm bar plus one line per ``log_every`` steps) and to
``<workdir>/metrics.jsonl``: ``{"step", "loss", "lr", "grad_norm", "n_tokens", "tokens_per_s",
"step_time_s", "skipped", "truncated"}`` per step and ``{"step", "eval_loss", "eval_tokens"}`` per eval.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from vxl_jax.runtime import sharding as sh
from vxl_jax.convert.folder import CONFIG_NAME, load_converted, save_converted
from vxl_jax.runtime.compile_cache import enable_compilation_cache
from vxl_jax.runtime.distributed import maybe_initialize
from vxl_jax.config import VideoXLConfig
from vxl_jax.data.pipeline import SampleSpec, TrainLoader, load_tokenizer
from vxl_jax.data.records import load_records
from vxl_jax.data.synthetic import make_colour_dataset
from vxl_jax.model import random_model
from vxl_jax.train import step as st
from vxl_jax.train.checkpointing import Checkpoints
from vxl_jax.train.config import CheckpointConfig, RunConfig, TrainConfig, load_run_config

log = logging.getLogger(__name__)


class _Stop:
    """SIGTERM -> checkpoint at the end of the current step, then exit."""

    def __init__(self):
        self.requested = False
        try:
            signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread
            pass

    def _handler(self, signum, frame):
        self.requested = True


def check_inputs(rc: RunConfig, export: str | None) -> None:
    """Refuse, before anything is written, a run whose inputs are missing (``data.train`` / ``data.eval`` files,
    data folders, ``checkpoint.init_from``) or whose ``export`` destination is taken by something else."""
    d = rc.data
    named = [("data.train", d.train), ("data.eval", d.eval), ("checkpoint.init_from", rc.checkpoint.init_from)]
    for key, path in named:
        if path and path != "synthetic" and not os.path.exists(path):
            raise FileNotFoundError(f"{key}: {path} not found")
    for key, path in (("data.video_folder", d.video_folder), ("data.image_folder", d.image_folder)):
        if path and not os.path.isdir(path):
            raise FileNotFoundError(f"{key}: folder {path} not found")
    if export and os.path.exists(export) and not os.path.isfile(os.path.join(export, CONFIG_NAME)) and (
            not os.path.isdir(export) or os.listdir(export)):
        raise ValueError(f"--export {export} exists and is not an export of a run (no {CONFIG_NAME}); "
                         f"give a new folder")


def setup_data(cfg, tcfg, dcfg, workdir: str, n_processes: int):
    """-> (train loader, eval records or None, spec)."""
    video_folder, image_folder = dcfg.video_folder, dcfg.image_folder
    train_path, eval_path = dcfg.train, dcfg.eval
    if "synthetic" in (train_path, eval_path):
        root = dcfg.synthetic_dir or os.path.join(workdir, "synthetic_data")
        paths = make_colour_dataset(root, n_train=dcfg.synthetic_train, n_eval=dcfg.synthetic_eval,
                                    progress=tcfg.progress)
        if train_path == "synthetic":
            train_path = paths["train"]
        if eval_path == "synthetic":
            eval_path = paths["eval"]
        video_folder = video_folder or paths["video_folder"]
        image_folder = image_folder or paths["image_folder"]
    spec = SampleSpec(max_prefix=dcfg.max_prefix, max_suffix=dcfg.max_suffix, frames_upbound=dcfg.frames_upbound,
                      image_size=cfg.vision.image_size, video_fps=dcfg.video_fps, video_folder=video_folder,
                      image_folder=image_folder, tokenizer=dcfg.tokenizer)
    if tcfg.batch_size % n_processes:
        raise ValueError(f"train.batch_size {tcfg.batch_size} is not divisible by {n_processes} processes")
    records, skipped = load_records(train_path)
    loader = TrainLoader(records, spec, tcfg.batch_size // n_processes, tcfg.accum, seed=tcfg.seed,
                         workers=dcfg.workers, skipped_at_load=len(skipped))
    eval_records = load_records(eval_path)[0] if eval_path else None
    return loader, eval_records, spec


def build_model(cfg: VideoXLConfig, tcfg: TrainConfig, ccfg: CheckpointConfig):
    """The model to train: ``checkpoint.init_from`` (its architecture, the preset's runtime) or random weights."""
    if ccfg.init_from:
        loaded_cfg, model, _, _ = load_converted(ccfg.init_from, runtime=cfg.runtime)
        if loaded_cfg != cfg:
            log.warning("checkpoint.init_from: using the architecture of %s, not the config's model section",
                        ccfg.init_from)
        return model
    return random_model(cfg, seed=tcfg.seed, std=tcfg.init_std)


def _write(f, rec: dict):
    f.write(json.dumps(rec) + "\n")
    f.flush()


def run_eval(trainer, state, eval_records, spec, tcfg, n_processes: int, ratio_idx_value: int, num_frames: int):
    """Mean token loss over ``tcfg.eval_batches`` batches of the eval records, every window at one ratio."""
    loader = TrainLoader(eval_records, spec, tcfg.batch_size // n_processes, 1, shuffle=False, num_epochs=1)
    idx = jnp.full((trainer.cfg.beacon.windows_for_frames(num_frames),), ratio_idx_value, jnp.int32)
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        if tcfg.eval_batches and i >= tcfg.eval_batches:
            break
        ls, n = trainer.eval_step(state, st.to_global(batch, trainer.mesh, tcfg.batch_size, trainer.rules), idx)
        total, count = total + float(ls), count + int(n)
    return total / max(count, 1), count


def export_model(path: str, trainer, state, tokenizer_name: str):
    """Write the current params as a converted folder (:func:`vxl_jax.convert.folder.save_converted`: atomic, with
    the model's fingerprint). Our own previous export is replaced only once the new one is complete."""
    model = nnx.merge(trainer.graphdef, state["params"], state["frozen"])
    if not (os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_NAME))):
        save_converted(path, model, tokenizer=load_tokenizer(tokenizer_name))
        return path
    parent, name = os.path.split(os.path.abspath(path))
    new, old = (os.path.join(parent, f".{name}.{os.getpid()}.tmp-{what}") for what in ("new", "old"))
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)
    save_converted(new, model, tokenizer=load_tokenizer(tokenizer_name))
    os.rename(path, old)
    os.rename(new, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def last_logged(metrics_path: str, step: int) -> dict:
    """The last metrics line written for training step ``step`` ({} if there is none)."""
    last = {}
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("step") == step and "loss" in rec:
                    last = rec
    return last


def _finished_summary(rc: RunConfig, ckpt, done: int, workdir: str, metrics_path: str, export: str | None) -> dict:
    return {"workdir": workdir, "start_step": done, "final_step": done, "already_finished": True,
            "steps": rc.train.steps, "last": last_logged(metrics_path, done), "train_time_s": 0.0,
            "checkpoints": ckpt.directory, "metrics": metrics_path, "stopped": False,
            "export": export if export and os.path.isdir(export) else None}


def _restore(ckpt, state, loader) -> tuple[dict, int]:
    """Latest checkpoint -> (state, its step); the loader continues from its saved position."""
    state, data_state, start = ckpt.restore(st.abstract_state(state))
    if data_state is not None:
        loader.set_state(data_state)
    else:
        log.warning("checkpoint step %d has no data-iterator state: the data order restarts", start)
    log.info("resumed from step %d (%s)", start, ckpt.directory)
    return state, start


def _header(rc: RunConfig, trainer, state, start: int) -> str:
    tcfg = rc.train
    n_train = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    n_all = n_train + sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["frozen"]))
    return (f"{sh.describe(trainer.mesh)}; params {n_all:,} ({n_train:,} trainable: {tcfg.trainable}"
            f"{', vision frozen' if tcfg.freeze_vision else ''}); ratios {list(rc.ratios)}; "
            f"batch {tcfg.batch_size} x accum {tcfg.accum}; steps {start}->{tcfg.steps}")


def _one_step(trainer, state, loader, tcfg: TrainConfig, step: int) -> tuple[dict, dict]:
    """Train step ``step + 1`` -> (state, its metrics line)."""
    t0 = time.time()
    batch = loader.__next__()
    t_data = time.time() - t0
    state, m = trainer.train_step(state, st.to_global(batch, trainer.mesh, tcfg.batch_size, trainer.rules))
    m = {k: v.item() for k, v in jax.device_get(m).items()}
    dt = time.time() - t0
    return state, {"step": step + 1, "loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"],
                   "n_tokens": m["n_tokens"], "tokens_per_s": m["input_tokens"] / dt, "step_time_s": dt,
                   "data_time_s": t_data, "skipped": loader.skipped, "truncated": loader.truncated}


def _train_steps(rc: RunConfig, trainer, state, loader, eval_data, ckpt, start: int, metrics_path: str,
                 is_main: bool, summary: dict):
    """Steps ``start .. train.steps`` with metrics, evals and checkpoints; stops early on SIGTERM.
    -> (state, final step, last metrics line, stopped). Eval losses go into ``summary``."""
    tcfg, ccfg = rc.train, rc.checkpoint
    eval_records, spec, n_proc = eval_data
    eval_idx = rc.ratios.index(tcfg.eval_ratio)
    stop, last, step = _Stop(), {}, start
    with open(metrics_path, "a") as mf, tqdm(total=tcfg.steps, initial=start, desc="train", unit="step",
                                            disable=not (tcfg.progress and is_main), dynamic_ncols=True) as bar:
        while step < tcfg.steps:
            state, last = _one_step(trainer, state, loader, tcfg, step)
            step += 1
            if is_main:
                _write(mf, last)
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.4f}", skipped=loader.skipped)
            if is_main and tcfg.log_every and step % tcfg.log_every == 0:
                bar.write(f"step {step:5d}  loss {last['loss']:.4f}  lr {last['lr']:.2e}  "
                          f"gnorm {last['grad_norm']:.3f}  tok/s {last['tokens_per_s']:.0f}  "
                          f"{last['step_time_s']:.2f}s  skipped {loader.skipped}")
            if eval_records and tcfg.eval_every and (step % tcfg.eval_every == 0 or step == tcfg.steps):
                el, en = run_eval(trainer, state, eval_records, spec, tcfg, n_proc, eval_idx, rc.data.frames_upbound)
                summary["eval_loss"] = el
                if is_main:
                    _write(mf, {"step": step, "eval_loss": el, "eval_tokens": en})
                    bar.write(f"step {step:5d}  eval loss {el:.4f} ({en} tokens, ratio {tcfg.eval_ratio})")
            if stop.requested or (ccfg.every and step % ccfg.every == 0) or step == tcfg.steps:
                ckpt.save(step, state, loader.get_state(), force=True)
            if stop.requested:
                bar.write(f"SIGTERM: checkpoint at step {step} written, stopping")
                break
    return state, step, last, stop.requested


def run(config_path: str, overrides: list[str] | None = None, export: str | None = None,
        re_export: bool = False, *, coordinator: str | None = None, num_processes: int | None = None,
        process_id: int | None = None) -> dict:
    """Train per the preset; returns a summary (final step, last loss, eval loss, paths, timings).

    A run whose checkpoint already reached ``train.steps`` trains nothing and leaves its export alone:
    the summary says ``already_finished``. ``re_export`` writes the export again from that checkpoint.
    ``coordinator`` ("host:port"), ``num_processes``, ``process_id``: a multi-process launch
    (:func:`vxl_jax.runtime.distributed.maybe_initialize`; unset ones are read from the environment)."""
    rc = load_run_config(config_path, overrides)
    tcfg, dcfg, ccfg = rc.train, rc.data, rc.checkpoint
    check_inputs(rc, export)  # before anything is written (synthetic data, the run folder)
    maybe_initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    enable_compilation_cache(min_compile_time_s=1.0)
    workdir = os.path.abspath(tcfg.workdir)
    os.makedirs(workdir, exist_ok=True)
    n_proc, is_main = jax.process_count(), jax.process_index() == 0
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    export = export or (os.path.join(workdir, "export") if ccfg.export else None)
    ckpt = Checkpoints(ccfg.dir or os.path.join(workdir, "checkpoints"), keep=ccfg.keep)
    done = ckpt.latest_step() if ccfg.resume else None
    if done is not None and done >= tcfg.steps and not (re_export and export):
        ckpt.close()  # nothing to train: no model, data or compile
        return _finished_summary(rc, ckpt, done, workdir, metrics_path, export)

    loader, eval_records, spec = setup_data(rc.model, tcfg, dcfg, workdir, n_proc)
    trainer, state = st.build_trainer(build_model(rc.model, tcfg, ccfg), tcfg, sh.make_mesh(rc.model.runtime.mesh),
                                      rc.ratios)
    start = 0
    if done is not None:
        state, start = _restore(ckpt, state, loader)
    if start < tcfg.steps:  # (a finished run restored only for --re-export needs no steps)
        trainer = trainer.compile()
    print(_header(rc, trainer, state, start), flush=True)

    summary = {"workdir": workdir, "start_step": start, "metrics": metrics_path}
    t_run = time.time()
    state, step, last, stopped = _train_steps(rc, trainer, state, loader, (eval_records, spec, n_proc), ckpt, start,
                                              metrics_path, is_main, summary)
    ckpt.close()
    summary.update(final_step=step, last=last or last_logged(metrics_path, step),
                   train_time_s=time.time() - t_run, checkpoints=ckpt.directory, stopped=stopped)
    if export and not stopped and is_main:
        summary["export"] = export_model(export, trainer, state, dcfg.tokenizer)
        print(f"exported the trained model to {export} (python infer.py --model {export} ...)", flush=True)
    return summary
