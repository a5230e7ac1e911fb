"""Strict, streaming conversion between a released Video-XL PyTorch checkpoint and ours.

torch -> ours (:func:`convert`): everything is validated from headers / index first (names,
shapes, dtypes, configs); only then is anything written, one tensor (or row block) at a time,
into a temporary folder that is renamed to the destination at the end. Every source tensor is
consumed exactly once and every target parameter (every layer index) is set exactly once.

ours -> torch (:func:`export_torch`): the original tensor names in (sharded) safetensors, plus
``config.json`` / ``vision_tower_config.json`` / tokenizer files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from vxl_jax.config import CLIP_VIT_L14_336, ConfigError, VideoXLConfig, from_hf_config, to_hf_config, vision_to_hf
from vxl_jax.convert import names as N
from vxl_jax.convert import fingerprint as fp
from vxl_jax.convert import zarr_out
from vxl_jax.convert.errors import ConversionError
from vxl_jax.convert.folder import CONFIG_NAME, PARAMS_DIR, check_converted_folder, read_params
from vxl_jax.convert.readers import FLOAT_DTYPES, Checkpoint
from vxl_jax.convert.writers import SafetensorsWriter
from vxl_jax.model.layers import DTYPES
from vxl_jax.runtime import atomic_io

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "chat_template.json", "chat_template.jinja",
                   "preprocessor_config.json")
EXTRA_FILES = TOKENIZER_FILES + ("generation_config.json",)
OUT_DTYPES = {name: np.dtype(dt) for name, dt in DTYPES.items()}  # --dtype choices, numpy dtypes
BLOCK_BYTES = 64 << 20  # unstacked tensors larger than this (embeddings, lm_head) go in row blocks
SUMMARY_NAME = "conversion.json"


@dataclasses.dataclass(frozen=True)
class Task:
    """Write ``transform(source[rows])`` into ``target[index]``."""

    src: str  # source tensor name as stored
    entry: N.Entry
    rows: slice | None
    index: tuple


# ------------------------------------------------------------------------------------ config


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


def _vision_candidates(src: str, hf: dict, vision_config: str | None) -> list[tuple[str, dict]]:
    if vision_config is not None:
        if not os.path.isfile(vision_config):
            raise ConversionError(f"--vision-config file not found: {vision_config}")
        return [(os.path.abspath(vision_config), _read_json(vision_config))]
    out = []
    beside = os.path.join(src, "vision_tower_config.json")
    if os.path.isfile(beside):
        out.append((os.path.abspath(beside), _read_json(beside)))
    tower = hf.get("mm_vision_tower")
    if isinstance(tower, str) and tower:
        for folder in (tower, os.path.join(src, tower)):
            cj = os.path.join(folder, "config.json")
            if os.path.isfile(cj):
                out.append((os.path.abspath(cj), _read_json(cj)))
                break
    out.append(("built-in openai/clip-vit-large-patch14-336", dict(CLIP_VIT_L14_336)))
    return out


def _vision_mismatch(vis, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Differences between a VisionConfig and the CLIP tensors of the checkpoint (canonical names)."""
    P = N.VISION_PREFIX
    expect = {
        P + "embeddings.class_embedding": (vis.hidden_size,),
        P + "embeddings.patch_embedding.weight": (vis.hidden_size, vis.num_channels, vis.patch_size, vis.patch_size),
        P + "embeddings.position_embedding.weight": (vis.num_patches + 1, vis.hidden_size),
        P + "encoder.layers.0.mlp.fc1.weight": (vis.intermediate_size, vis.hidden_size),
    }
    out = [f"{n}: checkpoint {shapes.get(n)}, config expects {s}" for n, s in expect.items() if shapes.get(n) != s]
    layers = {int(n[len(P + "encoder.layers."):].split(".")[0]) for n in shapes if n.startswith(P + "encoder.layers.")}
    if layers and len(layers) != vis.num_layers:
        out.append(f"checkpoint has {len(layers)} CLIP encoder layers, config has {vis.num_layers}")
    return out


def resolve_config(src: str, shapes: dict[str, tuple[int, ...]], vision_config: str | None = None):
    """-> (VideoXLConfig, description of the vision config used). ``shapes``: canonical name -> shape."""
    cj = os.path.join(src, "config.json")
    if not os.path.isfile(cj):
        raise ConversionError(f"{src}: config.json not found (is this a Video-XL checkpoint folder?)")
    hf = _read_json(cj)
    tried = []
    for where, vis in _vision_candidates(src, hf, vision_config):
        try:
            cfg = from_hf_config(hf, vision=vis)
        except ConfigError as e:
            if any(w in str(e) for w in ("vision", "projector", "tokens_per_frame", "grid")):
                tried.append(f"{where}: {e}")  # this CLIP config does not fit; try the next one
                continue
            raise ConversionError(f"{cj}: {e}") from None
        bad = _vision_mismatch(cfg.vision, shapes)
        if not bad:
            return cfg, where
        tried.append(f"{where}: " + "; ".join(bad))
    raise ConversionError(
        "no CLIP vision config fits the checkpoint's vision-tower tensors. Tried:\n  " + "\n  ".join(tried)
        + "\nPass the CLIP config.json with --vision-config FILE.")


# ------------------------------------------------------------------------------------ plan


def _auto_dtype(ck: Checkpoint) -> str:
    kinds = {i.dtype for i in ck.infos.values()}
    if kinds == {np.dtype(ml_dtypes.bfloat16)}:
        return "bfloat16"
    return "float32"


def _block_rows(e: N.Entry, itemsize: int) -> int | None:
    """Rows per block for a big unstacked copy/linear tensor, else None (written whole)."""
    if e.layer is not None or e.transform not in ("copy", "linear") or len(e.torch_shape) != 2:
        return None
    rows, cols = e.torch_shape
    if rows * cols * itemsize <= BLOCK_BYTES:
        return None
    return max(1, BLOCK_BYTES // (cols * itemsize))


def plan(ck: Checkpoint, cfg: VideoXLConfig, init_beacon: bool, itemsize: int):
    """Validate names/shapes/dtypes; -> (tasks in read order, table, chunks by path). One error for all."""
    table = N.build_table(cfg)
    canon, problems = _canonical_names(ck)
    source_of, beacon_rows = _sources(table, canon, cfg, init_beacon)
    problems += _source_problems(ck, table, source_of, beacon_rows)
    if problems:
        raise ConversionError(f"{ck.folder}: cannot convert:\n  " + "\n  ".join(problems))
    shapes = N.param_shapes(cfg)
    return _write_tasks(ck, shapes, table, source_of, beacon_rows, itemsize), table, _chunks(shapes, table, itemsize)


def _canonical_names(ck: Checkpoint) -> tuple[dict[str, str], list[str]]:
    """-> ({canonical released name: name as stored}, duplicate problems)."""
    canon: dict[str, str] = {}
    problems = []
    for name in ck.infos:
        c = N.canonical_name(name)
        if c in canon:
            problems.append(f"duplicate: {name!r} and {canon[c]!r} are the same parameter")
        canon[c] = name
    return canon, problems


def _is_beacon_embed(name: str) -> bool:
    return name.endswith("beacon_embed_tokens.weight")


def _sources(table, canon, cfg: VideoXLConfig, init_beacon: bool):
    """-> ({table name: stored source tensor or None}, rows of the source for the beacon embedding or None).

    Without beacon weights (a plain Qwen2 / LLaVA checkpoint) and ``init_beacon``, beacon q/k/v read q/k/v
    and the beacon embedding reads the eos (or bos) row of ``embed_tokens`` (docs/algorithm.md §8)."""
    beacon_names = {n for n, e in table.items() if N.is_beacon(e)}
    source_of = {n: canon.get(n) for n in table}
    if beacon_names & set(canon):
        if init_beacon:
            raise ConversionError("--init-beacon given, but the checkpoint already has beacon weights")
        return source_of, None
    if not init_beacon:
        raise ConversionError(
            "the checkpoint has no beacon weights (model.beacon_embed_tokens.weight, "
            "model.layers.*.self_attn.beacon_{q,k,v}_proj.*): it is a plain Qwen2/LLaVA checkpoint. "
            "Pass --init-beacon to initialise them from q/k/v_proj and the eos embedding (docs/algorithm.md §8).")
    eos = cfg.lm.eos_ids[0] if cfg.beacon.embed_init == "eos" else cfg.lm.bos_token_id
    if eos is None or not 0 <= eos < cfg.lm.vocab_size:
        raise ConversionError(f"--init-beacon needs a valid {cfg.beacon.embed_init} token id, got {eos}")
    for n in beacon_names:
        source_of[n] = canon.get(n.replace("beacon_embed_tokens", "embed_tokens").replace("beacon_", ""))
    return source_of, slice(eos, eos + 1)


def _listed(what: str, items: list[str], sep: str = ", ") -> str:
    return f"{len(items)} {what}: " + sep.join(items[:50]) + (" ..." if len(items) > 50 and sep == ", " else "")


def _source_problems(ck: Checkpoint, table, source_of, beacon_rows) -> list[str]:
    """Missing, unexpected, mis-shaped and non-float tensors, as problem lines."""
    missing = sorted(n for n, s in source_of.items() if s is None)
    used = {s for s in source_of.values() if s is not None}
    unexpected = sorted(n for n in ck.infos if n not in used)
    wrong = []
    for n, s in source_of.items():
        if s is None:
            continue
        info = ck.infos[s]
        want = table[n].torch_shape
        got = info.shape
        if beacon_rows is not None and _is_beacon_embed(n):
            got = (1,) + tuple(got[1:])
        if tuple(got) != want:
            wrong.append(f"{s}: shape {list(info.shape)}, expected {list(want)}")
        if info.dtype not in FLOAT_DTYPES:
            wrong.append(f"{s}: dtype {info.dtype} is not a float type")
    problems = []
    if missing:
        problems.append(_listed("missing tensor(s)", missing))
    if unexpected:
        problems.append(_listed("unexpected tensor(s)", unexpected))
    if wrong:
        problems.append(_listed("tensor(s) with the wrong shape or dtype", wrong, "; "))
    return problems


def _write_tasks(ck: Checkpoint, shapes, table, source_of, beacon_rows, itemsize: int) -> list[Task]:
    """One task per stacked layer slice, whole tensor, beacon-embedding row, or row block of a big tensor;
    sorted in the checkpoint's read order."""
    tasks = []
    for n, e in table.items():
        full = shapes[e.path][0]
        src = source_of[n]
        if e.layer is not None:
            tasks.append(Task(src, e, None, (e.layer,)))
        elif beacon_rows is not None and _is_beacon_embed(n):
            tasks.append(Task(src, e, beacon_rows, (slice(None),)))
        elif (br := _block_rows(e, itemsize)) is None:
            tasks.append(Task(src, e, None, (slice(None),) * len(full)))
        else:
            rows = e.torch_shape[0]
            for a in range(0, rows, br):
                sl = slice(a, min(rows, a + br))
                tasks.append(Task(src, e, sl, (sl, slice(None)) if e.transform == "copy" else (slice(None), sl)))
    order = {n: i for i, n in enumerate(ck.order())}
    tasks.sort(key=lambda t: (order[t.src], t.rows.start if t.rows is not None else 0))
    return tasks


def _chunks(shapes, table, itemsize: int) -> dict:
    """Storage chunk shape per parameter path: one layer, the whole tensor, or one row block."""
    chunks = {}
    for e in table.values():
        full = shapes[e.path][0]
        if e.layer is not None:
            chunks[e.path] = (1,) + full[1:]
        elif (br := _block_rows(e, itemsize)) is None:
            chunks[e.path] = full
        else:
            chunks[e.path] = (br, full[1]) if e.transform == "copy" else (full[0], br)
    return chunks


# ------------------------------------------------------------------------------------ torch -> ours


def _fresh_tmp(dst: str) -> str:
    """A temporary folder beside ``dst`` (atomic: :mod:`vxl_jax.runtime.atomic_io`), renamed by :func:`_finish`."""
    dst = os.path.abspath(dst)
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise ConversionError(f"destination {dst} already exists and is not empty")
    try:
        return atomic_io.fresh_dir(dst, "destination")
    except OSError as e:
        raise ConversionError(f"cannot create the destination {dst}: {e.strerror or e}") from None


def _finish(tmp: str, dst: str, fingerprint: str, how: str) -> None:
    fp.write_record(tmp, fingerprint, how)
    atomic_io.publish_dir(tmp, dst)


def _copy_extras(src: str, dst: str) -> list[str]:
    copied = []
    for f in EXTRA_FILES:
        p = os.path.join(src, f)
        if os.path.isfile(p):
            shutil.copy2(p, os.path.join(dst, f))
            copied.append(f)
    return copied


def _write_params(ck: Checkpoint, tasks: list[Task], arrays, pshapes, out_dt, progress: bool) -> int:
    """Run the tasks (grouped by source file, in on-disk order; each source block read once), then check every
    parameter slice was written exactly once. -> bytes written."""
    written: dict[tuple, int] = {}  # (path, index) -> times written
    elements: dict[tuple, int] = {}  # path -> elements written
    nbytes_out = 0
    bar = tqdm(total=sum(_task_bytes(t, ck) for t in tasks), unit="B", unit_scale=True, desc="convert",
               disable=not progress)
    last_key, block, cur_file = None, None, None
    for t in tasks:
        if ck.infos[t.src].file != cur_file:
            if cur_file is not None:
                ck.release(cur_file)
            cur_file = ck.infos[t.src].file
        key = (t.src, None if t.rows is None else (t.rows.start, t.rows.stop))
        if key != last_key:  # q/k/v feed two targets with --init-beacon: read once
            block = None
            block = ck.read(t.src, t.rows)
            last_key = key
        value = np.ascontiguousarray(N.to_ours(t.entry.transform, block, _target_shape(t, pshapes)), dtype=out_dt)
        arrays[t.entry.path][t.index].write(value).result()
        wkey = (t.entry.path, repr(t.index))
        written[wkey] = written.get(wkey, 0) + 1
        elements[t.entry.path] = elements.get(t.entry.path, 0) + value.size
        nbytes_out += value.nbytes
        bar.update(_task_bytes(t, ck))
        del value
    block = None
    bar.close()
    twice = [k for k, v in written.items() if v != 1]
    assert not twice, f"parameter slices written more than once: {twice}"
    for p, (s, _) in pshapes.items():
        assert elements.get(p) == int(np.prod(s, dtype=np.int64)), f"{p}: not completely written"
    return nbytes_out


def convert(src: str, dst: str, dtype: str | None = None, vision_config: str | None = None,
            init_beacon: bool = False, progress: bool = True) -> dict:
    """Convert a released PyTorch checkpoint folder ``src`` into our folder ``dst``; returns the summary."""
    t0 = time.perf_counter()
    if os.path.isfile(os.path.join(src, CONFIG_NAME)):
        raise ConversionError(f"{src} is already a converted folder ({CONFIG_NAME}): load it with VideoXL.load, "
                              "or export it back with --to-torch")
    ck = Checkpoint(src)
    shapes = {N.canonical_name(n): i.shape for n, i in ck.infos.items()}
    cfg, vision_source = resolve_config(src, shapes, vision_config)
    dtype = dtype or _auto_dtype(ck)
    if dtype not in OUT_DTYPES:
        raise ConversionError(f"--dtype must be one of {sorted(OUT_DTYPES)}, got {dtype!r}")
    out_dt = OUT_DTYPES[dtype]
    cfg = cfg.with_runtime(param_dtype=dtype, compute_dtype=dtype)
    tasks, table, chunks = plan(ck, cfg, init_beacon, max(out_dt.itemsize, 4))
    pshapes = N.param_shapes(cfg)

    tmp = _fresh_tmp(dst)
    try:
        arrays = zarr_out.create(os.path.join(tmp, PARAMS_DIR),
                                 {p: (s, out_dt, chunks[p]) for p, (s, _) in pshapes.items()})
        nbytes_out = _write_params(ck, tasks, arrays, pshapes, out_dt, progress)
        cfg.to_json(os.path.join(tmp, CONFIG_NAME))
        copied = _copy_extras(src, tmp)
        n_params = int(sum(int(np.prod(s, dtype=np.int64)) for s, _ in pshapes.values()))
        summary = {
            "direction": "torch->jax", "source": os.path.abspath(src), "source_format": ck.format,
            "source_files": sorted(os.path.basename(f) for f in ck.files), "source_tensors": len(ck.infos),
            "source_bytes": ck.nbytes, "parameters": n_params, "parameter_arrays": len(pshapes),
            "written_bytes": nbytes_out, "dtype": dtype, "vision_config": vision_source,
            "init_beacon": bool(init_beacon), "copied_files": copied, "fingerprint": fp.of_folder(tmp, cfg),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        with open(os.path.join(tmp, SUMMARY_NAME), "w") as f:
            json.dump(summary, f, indent=2)
        _finish(tmp, dst, summary["fingerprint"], "convert_weights.py (torch -> jax), read back from params/")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _target_shape(t: Task, pshapes) -> tuple[int, ...]:
    full = pshapes[t.entry.path][0]
    return full[1:] if t.entry.layer is not None else full


def _task_bytes(t: Task, ck: Checkpoint) -> int:
    info = ck.infos[t.src]
    n = int(np.prod(info.shape, dtype=np.int64))
    if t.rows is not None:
        n = n // info.shape[0] * (t.rows.stop - t.rows.start)
    return n * info.dtype.itemsize


# ------------------------------------------------------------------------------------ ours -> torch


def plan_shards(specs: list[tuple], max_shard_bytes: int) -> list[list[tuple]]:
    """Group ``(name, shape, dtype)`` specs, in order, into shards of at most ``max_shard_bytes``
    (a single larger tensor gets a shard of its own)."""
    shards, cur, size = [], [], 0
    for spec in specs:
        b = int(np.prod(spec[1], dtype=np.int64)) * np.dtype(spec[2]).itemsize
        if cur and size + b > max_shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(spec)
        size += b
    shards.append(cur)
    return shards


def export_torch(src: str, dst: str, dtype: str | None = None, max_shard_bytes: int = 5 << 30,
                 progress: bool = True) -> dict:
    """Write our converted folder ``src`` as a released-layout PyTorch folder ``dst`` (safetensors)."""
    t0 = time.perf_counter()
    cfg = check_converted_folder(src)
    dtype = dtype or cfg.runtime.param_dtype
    if dtype not in OUT_DTYPES:
        raise ConversionError(f"--dtype must be one of {sorted(OUT_DTYPES)}, got {dtype!r}")
    out_dt = OUT_DTYPES[dtype]
    table = N.build_table(cfg)
    get = read_params(src, cfg)  # path, layer -> numpy (one slice at a time where the layout allows)
    specs = [(n, e.torch_shape, out_dt) for n, e in table.items()]
    shards = plan_shards(specs, max_shard_bytes)
    tmp = _fresh_tmp(dst)
    try:
        names = (["model.safetensors"] if len(shards) == 1
                 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
        weight_map, total = {}, 0
        bar = tqdm(total=len(specs), unit="tensor", desc="export", disable=not progress)
        for fname, shard in zip(names, shards):
            w = SafetensorsWriter(os.path.join(tmp, fname), shard, metadata={"format": "pt"})
            for name, _, _ in shard:
                e = table[name]
                br = _block_rows(e, max(out_dt.itemsize, 4))
                if br is None:
                    w.write(name, N.to_torch(e.transform, get(e.path, e.layer)))
                else:  # embeddings / lm_head: torch row blocks, never the whole matrix twice
                    rows = e.torch_shape[0]
                    blocks = (slice(a, min(rows, a + br)) for a in range(0, rows, br))
                    w.write_parts(name, (N.to_torch(e.transform, get(e.path, None, (sl,) if e.transform == "copy"
                                                                 else (slice(None), sl))) for sl in blocks))
                weight_map[name] = fname
                bar.update(1)
            total += w.nbytes
            w.close()
        bar.close()
        if len(shards) > 1:
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        hf = to_hf_config(cfg.with_runtime(param_dtype=dtype))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf, f, indent=2)
        with open(os.path.join(tmp, "vision_tower_config.json"), "w") as f:
            json.dump(vision_to_hf(cfg.vision), f, indent=2)
        copied = _copy_extras(src, tmp)
        summary = {"direction": "jax->torch", "source": os.path.abspath(src), "tensors": len(specs),
                   "shards": names, "bytes": total, "dtype": dtype, "copied_files": copied,
                   "fingerprint": _exported_fingerprint(src, cfg, get, out_dt),
                   "seconds": round(time.perf_counter() - t0, 3)}
        _finish(tmp, dst, summary["fingerprint"], f"convert_weights.py --to-torch: the model these weights convert "
                f"back to with --dtype {dtype}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _exported_fingerprint(src: str, cfg: VideoXLConfig, get, out_dt) -> str:
    """The fingerprint of the model an export converts back to: the source's when the dtype is kept, else the
    source's values cast to ``out_dt`` (streamed)."""
    if np.dtype(DTYPES[cfg.runtime.param_dtype]) == out_dt:
        return fp.folder_fingerprint(src, cfg)
    leaves = {p: (s, out_dt, p) for p, (s, _) in N.param_shapes(cfg).items()}
    return fp.of_leaves(leaves, lambda p, sl: np.asarray(get(p, None, None if sl is None else (sl,)), dtype=out_dt))
