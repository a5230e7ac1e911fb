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
import numpy as np

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


def enable_compilation_cache(path: str | None = None) -> None:
    """Persistent XLA compilation cache (a resumed or repeated run skips the compile)."""
    path = path or os.environ.get("VXL_JAX_CACHE") or os.path.expanduser("~/.cache/vxl_jax/xla")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def setup_data(cfg, tcfg, dcfg, workdir: str, n_processes: int):
    """-> (train loader, eval records or None, spec)."""
    from vxl_jax.data.pipeline import SampleSpec, TrainLoader
    from vxl_jax.data.records import load_records

    video_folder, image_folder = dcfg.video_folder, dcfg.image_folder
    train_path, eval_path = dcfg.train, dcfg.eval
    if "synthetic" in (train_path, eval_path):
        from vxl_jax.data.synthetic import make_colour_dataset

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


def build_model(cfg, tcfg, ccfg):
    if ccfg.init_from:
        from vxl_jax.checkpoint import load_converted

        loaded_cfg, model, _, _ = load_converted(ccfg.init_from, dtype=cfg.runtime.param_dtype)
        if loaded_cfg.replace(runtime=cfg.runtime) != cfg:
            log.warning("checkpoint.init_from: using the architecture of %s, not the config's model section",
                        ccfg.init_from)
        model.cfg = loaded_cfg.replace(runtime=cfg.runtime)
        return model
    from vxl_jax.model import random_model

    return random_model(cfg, seed=tcfg.seed, std=tcfg.init_std)


def _write(f, rec: dict):
    f.write(json.dumps(rec) + "\n")
    f.flush()


def run_eval(trainer, state, eval_records, spec, tcfg, mesh, n_processes: int, ratio_idx_value: int, num_frames: int):
    from vxl_jax.data.pipeline import TrainLoader
    from vxl_jax.train.step import num_windows, to_global

    import jax.numpy as jnp

    loader = TrainLoader(eval_records, spec, tcfg.batch_size // n_processes, 1, shuffle=False, num_epochs=1)
    W = num_windows(num_frames, state_cfg(trainer, state).beacon.frames_per_window)
    idx = jnp.full((W,), ratio_idx_value, jnp.int32)
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        if tcfg.eval_batches and i >= tcfg.eval_batches:
            break
        ls, n = trainer.eval_step(state, to_global(batch, mesh, tcfg.batch_size), idx)
        total, count = total + float(ls), count + int(n)
    return total / max(count, 1), count


def state_cfg(trainer, state):
    from flax import nnx

    return nnx.merge(trainer.graphdef, state["params"], state["frozen"]).cfg


def export_model(path: str, trainer, state, tokenizer_name: str):
    """Write the current params as a converted folder (``vxl_jax.checkpoint.save_converted``)."""
    from flax import nnx

    from vxl_jax.checkpoint import CONFIG_NAME, save_converted
    from vxl_jax.data.pipeline import load_tokenizer

    if os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_NAME)):
        shutil.rmtree(path)  # our own previous export
    model = nnx.merge(trainer.graphdef, state["params"], state["frozen"])
    save_converted(path, model, tokenizer=load_tokenizer(tokenizer_name))
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


def run(config_path: str, overrides: list[str] | None = None, export: str | None = None,
        re_export: bool = False) -> dict:
    """Train per the preset; returns a summary (final step, last loss, eval loss, paths, timings).

    A run whose checkpoint already reached ``train.steps`` trains nothing and leaves its export alone:
    the summary says ``already_finished``. ``re_export`` writes the export again from that checkpoint."""
    from tqdm.auto import tqdm

    from vxl_jax import sharding as sh
    from vxl_jax.config import ConfigError, VideoXLConfig, load_yaml_sections
    from vxl_jax.train import optim
    from vxl_jax.train import step as st
    from vxl_jax.train.checkpointing import Checkpoints
    from vxl_jax.train.config import from_sections

    sections = load_yaml_sections(config_path, overrides)
    cfg = VideoXLConfig.from_dict(sections["model"])
    tcfg, dcfg, ccfg = from_sections(sections)
    ratios = tuple(tcfg.ratios) or tuple(cfg.beacon.ratios)
    for r in ratios:
        cfg.beacon.check_ratio(r)
    if tcfg.eval_ratio not in ratios:
        raise ConfigError(f"train.eval_ratio {tcfg.eval_ratio} is not one of the training ratios {list(ratios)}")

    sh.maybe_initialize_distributed()
    enable_compilation_cache()
    workdir = os.path.abspath(tcfg.workdir)
    os.makedirs(workdir, exist_ok=True)
    n_proc, is_main = jax.process_count(), jax.process_index() == 0
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    export = export or (os.path.join(workdir, "export") if ccfg.export else None)
    ckpt = Checkpoints(ccfg.dir or os.path.join(workdir, "checkpoints"), keep=ccfg.keep, every=ccfg.every)
    done = ckpt.latest_step() if ccfg.resume else None
    if done is not None and done >= tcfg.steps and not (re_export and export):
        ckpt.close()  # nothing to train: no model, data or compile
        return {"workdir": workdir, "start_step": done, "final_step": done, "already_finished": True,
                "steps": tcfg.steps, "last": last_logged(metrics_path, done), "train_time_s": 0.0,
                "checkpoints": ckpt.directory, "metrics": metrics_path, "stopped": False,
                "export": export if export and os.path.isdir(export) else None}
    mesh = sh.make_mesh(cfg.runtime.mesh)

    loader, eval_records, spec = setup_data(cfg, tcfg, dcfg, workdir, n_proc)
    model = build_model(cfg, tcfg, ccfg)
    cfg = model.cfg
    tx = optim.make_optimizer(tcfg)
    graphdef, state, shardings = st.init_state(model, tx, optim.trainable_filter(tcfg.trainable, tcfg.freeze_vision),
                                               mesh, tcfg.seed)
    del model
    start = 0
    if done is not None:
        state, data_state, start = ckpt.restore(st.abstract_state(state))
        if data_state is not None:
            loader.set_state(data_state)
        else:
            log.warning("checkpoint step %d has no data-iterator state: the data order restarts", start)
        log.info("resumed from step %d (%s)", start, ckpt.directory)
    trainer = st.Trainer(graphdef, tx, optim.lr_schedule(tcfg), ratios, cfg.runtime.remat, mesh, shardings,
                         keep_memory=tcfg.keep_memory)
    if start < tcfg.steps:  # (a finished run restored only for --re-export needs no steps)
        trainer = trainer.compile()
    n_train = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    n_all = n_train + sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["frozen"]))
    header = (f"{sh.describe(mesh)}; params {n_all:,} ({n_train:,} trainable: {tcfg.trainable}"
              f"{', vision frozen' if tcfg.freeze_vision else ''}); ratios {list(ratios)}; "
              f"batch {tcfg.batch_size} x accum {tcfg.accum}; steps {start}->{tcfg.steps}")
    print(header, flush=True)

    stop = _Stop()
    summary = {"workdir": workdir, "start_step": start, "metrics": metrics_path}
    eval_idx = ratios.index(tcfg.eval_ratio)
    last = {}
    t_run = time.time()
    with open(metrics_path, "a") as mf, tqdm(total=tcfg.steps, initial=start, desc="train", unit="step",
                                            disable=not (tcfg.progress and is_main), dynamic_ncols=True) as bar:
        step = start
        while step < tcfg.steps:
            t0 = time.time()
            batch = loader.__next__()
            t_data = time.time() - t0
            state, m = trainer.train_step(state, st.to_global(batch, mesh, tcfg.batch_size))
            m = {k: v.item() for k, v in jax.device_get(m).items()}
            dt = time.time() - t0
            step += 1
            last = {"step": step, "loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"],
                    "n_tokens": m["n_tokens"], "tokens_per_s": m["input_tokens"] / dt, "step_time_s": dt,
                    "data_time_s": t_data, "skipped": loader.skipped, "truncated": loader.truncated}
            if is_main:
                _write(mf, last)
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.4f}", skipped=loader.skipped)
            if is_main and tcfg.log_every and step % tcfg.log_every == 0:
                bar.write(f"step {step:5d}  loss {m['loss']:.4f}  lr {m['lr']:.2e}  gnorm {m['grad_norm']:.3f}  "
                          f"tok/s {last['tokens_per_s']:.0f}  {dt:.2f}s  skipped {loader.skipped}")
            if eval_records and tcfg.eval_every and (step % tcfg.eval_every == 0 or step == tcfg.steps):
                el, en = run_eval(trainer, state, eval_records, spec, tcfg, mesh, n_proc, eval_idx,
                                  dcfg.frames_upbound)
                summary["eval_loss"] = el
                if is_main:
                    _write(mf, {"step": step, "eval_loss": el, "eval_tokens": en})
                    bar.write(f"step {step:5d}  eval loss {el:.4f} ({en} tokens, ratio {tcfg.eval_ratio})")
            if stop.requested or (ccfg.every and step % ccfg.every == 0) or step == tcfg.steps:
                ckpt.save(step, state, loader.get_state(), force=True)
            if stop.requested:
                bar.write(f"SIGTERM: checkpoint at step {step} written, stopping")
                break
    ckpt.close()
    summary.update(final_step=step, last=last or last_logged(metrics_path, step),
                   train_time_s=time.time() - t_run, checkpoints=ckpt.directory,
                   stopped=stop.requested)
    if export and not stop.requested and is_main:
        summary["export"] = export_model(export, trainer, state, dcfg.tokenizer)
        print(f"exported the trained model to {export} (python infer.py --model {export} ...)", flush=True)
    return summary
