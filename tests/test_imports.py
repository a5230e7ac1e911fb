"""The package's import structure (an AST scan of vxl_jax/, nothing imported):

- no import cycle between our modules (module-level imports; importing ``a.b.c`` also runs the
  ``a.b`` package's ``__init__``, so that edge counts too, except from inside ``a.b`` itself; the root
  ``vxl_jax/__init__.py`` is the public facade and is left out);
- our own modules are imported at the top of a module, not inside functions, except the pairs in
  :data:`LOCAL_IMPORTS_ALLOWED`, each with its reason.

Two lazy imports are by design: the root package exports its names on first use (``vxl_jax/__init__.py``'s
PEP 562 ``__getattr__``, through ``importlib``, so the scan does not see it;
:func:`test_import_vxl_jax_loads_no_jax`), and each CLI parses its arguments in a light module whose ``main``
imports the command's heavy module after parsing (listed below; :func:`test_cli_help_loads_no_jax` runs
``--help`` in a subprocess).
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vxl_jax"
HEAVY = {"jax", "jaxlib", "flax", "orbax", "tensorstore", "transformers", "torch"}  # seconds to import

# (importing module, imported module) -> why the import stays inside a function. Every entry must still be
# needed (test_allow_list_is_current).
LOCAL_IMPORTS_ALLOWED = {
    ("vxl_jax.cli.infer", "vxl_jax.cli.infer_flow"): "the CLI's one lazy import: infer.py's parser (argparse and the "
                                                     "standard library) answers --help and usage errors without "
                                                     "loading jax; main imports the flow after parsing",
    ("vxl_jax.cli.convert", "vxl_jax.cli.convert_run"): "the CLI's one lazy import: convert_weights.py --help and "
                                                        "usage errors load neither jax nor the converter stack",
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(modules):
    """-> (module-level edges {module: {imported}}, function-local pairs {(module, imported): line})."""

    def resolve(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    edges, local = {m: set() for m in modules}, {}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] != "vxl_jax":
                    continue
                target = resolve(name)
                if id(node) not in top:
                    local.setdefault((mod, target), node.lineno)
                    continue
                # the target and the packages above it (their __init__ runs first), the root facade excepted
                parts = target.split(".")
                edges[mod].update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    for mod in edges:  # a module's own packages are already being imported when it runs: no edge
        edges[mod] -= {mod} | {mod.rsplit(".", i)[0] for i in range(1, mod.count(".") + 1)}
    return edges, local


def _cycle(edges):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(edges):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle():
    """Also counting function-local imports (a cycle hidden inside a function is still a cycle), except the
    allowed ones."""
    edges, local = _imports(_modules())
    for (mod, target) in local:
        if (mod, target) not in LOCAL_IMPORTS_ALLOWED and mod != target:
            edges[mod].add(target)
    cycle = _cycle({m: e for m, e in edges.items() if m != "vxl_jax"})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_own_modules_are_imported_at_the_top():
    _, local = _imports(_modules())
    bad = {pair: line for pair, line in local.items() if pair not in LOCAL_IMPORTS_ALLOWED}
    assert not bad, "function-local imports of our own modules (move them to the top): " + ", ".join(
        f"{m}:{line} imports {t}" for (m, t), line in sorted(bad.items()))


def test_the_scan_sees_cycles_and_local_imports(tmp_path):
    """The checks can fail: a made-up package with a cycle through a package __init__ and a local import."""
    global PACKAGE
    pkg = tmp_path / "vxl_jax"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from vxl_jax.sub.a import f\n")
    (pkg / "sub" / "a.py").write_text("from vxl_jax import b\n\ndef f():\n    from vxl_jax import c\n")
    (pkg / "b.py").write_text("from vxl_jax.sub.x import y\n")  # runs sub/__init__ -> a -> b
    (pkg / "c.py").write_text("")
    saved, PACKAGE = PACKAGE, pkg
    try:
        edges, local = _imports(_modules())
    finally:
        PACKAGE = saved
    assert _cycle(edges) is not None
    assert ("vxl_jax.sub.a", "vxl_jax.c") in local


def test_allow_list_is_current():
    _, local = _imports(_modules())
    stale = sorted(pair for pair in LOCAL_IMPORTS_ALLOWED if pair not in local)
    assert not stale, f"LOCAL_IMPORTS_ALLOWED lists imports that are gone (remove them): {stale}"


def _imported(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime ARGS`` at the repository root -> (the process, the top-level names of every
    module it imported)."""
    r = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, timeout=120,
                       check=False, cwd=ROOT)
    names = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in r.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    return r, names


@pytest.mark.parametrize("script", ["infer.py", "convert_weights.py"])
def test_cli_help_loads_no_jax(script):
    """``--help`` answers from the light parser module: exit 0, the usage on stdout, no heavy import."""
    r, names = _imported(script, "--help")
    assert r.returncode == 0 and r.stdout.startswith(f"usage: {script}"), r.stderr[-2000:]
    assert "vxl_jax" in names and not names & HEAVY, sorted(names & HEAVY)


def test_import_vxl_jax_loads_no_jax():
    """``import vxl_jax`` loads none of the heavy stack; each public name resolves to its module's object."""
    r, names = _imported("-c", "import vxl_jax")
    assert r.returncode == 0 and "vxl_jax" in names and not names & HEAVY, (r.stderr[-2000:], sorted(names & HEAVY))
    import vxl_jax

    for name in vxl_jax.__all__:
        assert getattr(vxl_jax, name) is getattr(importlib.import_module(vxl_jax._EXPORTS[name]), name)
    with pytest.raises(AttributeError):
        vxl_jax.no_such_name  # noqa: B018
