"""The package's layers (an AST scan of vxl_jax/, nothing imported): each folder imports only from the folders
below it, and no function is longer than 60 lines.

    cli                      the commands (infer.py, train.py, convert_weights.py are entry points into it)
    train, eval, serve       a training run; benchmarks, prompts and scoring; the server (scheduler, HTTP)
    infer, data              the inference core, facade, sessions, memory files; the training data pipeline
    beacon, convert          the KV memory and its window scan; checkpoint conversion and the converted folder
    model                    CLIP, projector, Qwen2 with beacon projections, attention backends
    text, media, runtime     prompts and tokens; video and CLIP preprocessing; meshes, sharding, start-up
    config                   the typed model config

The root ``vxl_jax/__init__.py`` is the public facade and may name anything.
"""

from __future__ import annotations

import ast

from tests.test_imports import PACKAGE, _imports, _modules

LAYERS = [("config",), ("text", "media", "runtime"), ("model",), ("beacon", "convert"), ("infer", "data"),
          ("train", "eval", "serve"), ("cli",)]
RANK = {folder: rank for rank, folders in enumerate(LAYERS) for folder in folders}
MAX_FUNCTION_LINES = 60


def _folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_folder_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(RANK), f"folders without a layer: {folders - set(RANK)}; layers without a folder: " \
                                 f"{set(RANK) - folders}"
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside the layer folders: {loose}"


def test_imports_go_down_the_layers():
    edges, local = _imports(_modules())
    pairs = {(m, t) for m, targets in edges.items() for t in targets} | set(local)
    bad = []
    for mod, target in sorted(pairs):
        src, dst = _folder(mod), _folder(target)
        if src is None or dst is None or src == dst:
            continue
        if RANK[dst] >= RANK[src]:
            bad.append(f"{mod} imports {target} ({src} is at layer {RANK[src]}, {dst} at {RANK[dst]})")
    assert not bad, "imports that do not go down the layers:\n" + "\n".join(bad)


def test_functions_are_short():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + ", ".join(long)
