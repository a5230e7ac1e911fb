"""The README's Python blocks run as pasted, on the embedded tiny model, in order and in one namespace (as a reader
pasting them into one session would). The only changes are the ones the README itself names: the Library block's
lines 6 and 7 replaced by the tiny-model block, and the names it calls placeholders (``hour.mp4``,
``more_frames``, ``ids_1``, ``frames_1``, ``q_1``, ``mem_1``, ...) bound to the sample video and its frames."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_blocks_and_their_placeholders_are_where_the_readme_says():
    library, tiny, streaming, batched = _blocks()[:4]  # (later blocks: the server's client, needs a server)
    lines = library.splitlines()
    assert lines[5].startswith("vx = VideoXL.load(") and lines[6].startswith("frames, info = load_video(")
    text = README.read_text()
    assert "lines 6 and 7" in text and "(a placeholder)" in streaming and "placeholder: more" in streaming
    assert "`ids_1`, `frames_1`, `q_1`, `mem_1`, ... are placeholders" in text
    assert 'VideoStream("hour.mp4"' in streaming and "more_frames" in streaming and "ids_1" in batched


def test_readme_python_blocks_run(demo_vx, tmp_path, monkeypatch):
    import vxl_jax.infer.demo

    monkeypatch.chdir(tmp_path)
    # the tiny block's default_model() is the embedded model (seed 0): the run's shared one, compiled once
    monkeypatch.setattr(vxl_jax.infer.demo, "default_model", lambda *a, **k: demo_vx)
    library, tiny, streaming, batched = _blocks()[:4]  # (later blocks: the server's client, needs a server)
    lines = library.splitlines()
    code = "\n".join(lines[:5] + tiny.splitlines() + lines[7:])
    ns: dict = {}
    exec(compile(code, "README.md (Library, with the tiny-model lines)", "exec"), ns)
    assert ns["res"].sizes["prefix"] == 17  # as the README says of the tiny tokenizer
    assert ns["mem"].sizes == ns["res"].video_memory.sizes
    exec(compile(streaming.replace('"hour.mp4"', '"sample.mp4"'), "README.md (streaming)", "exec"),
         {**ns, "more_frames": ns["frames"][:3]})
    assert (tmp_path / "cam.session").is_file()
    from vxl_jax.text.prompt import suffix_ids

    qs = {f"q_{i}": suffix_ids(f"Question {i}?", demo_vx.tokenizer) for i in range(1, 9)}
    places = {"ids_1": ns["ids"], "ids_2": ns["ids"], "ids_3": qs["q_1"], "frames_1": ns["frames"],  # ids_3: text only
              "frames_2": ns["frames"][:10], "mem_1": ns["mem"], "mem_2": ns["mem"], **qs}
    code = batched.replace("[q_1, ..., q_8]", "[" + ", ".join(qs) + "]")
    exec(compile(code, "README.md (batched)", "exec"), {**ns, **places})


@pytest.mark.parametrize("block", [0, 2, 3])
def test_placeholders_are_the_only_unknown_names(block):
    """Each block's free names are defined by an earlier block or are one of the README's placeholders."""
    import ast
    import builtins

    blocks = _blocks()
    defined = set(dir(builtins))
    for b in blocks[:block]:
        defined |= {n.id for n in ast.walk(ast.parse(b)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        defined |= {a.asname or a.name for n in ast.walk(ast.parse(b)) if isinstance(n, (ast.Import, ast.ImportFrom))
                    for a in n.names}
    tree = ast.parse(blocks[block].replace("...", "None"))
    stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    stored |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
               for a in n.names}
    free = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    placeholders = {"more_frames", "ids_1", "ids_2", "ids_3", "frames_1", "frames_2", "mem_1", "mem_2"} | {
        f"q_{i}" for i in range(1, 9)}
    assert free - stored - defined <= placeholders, free - stored - defined - placeholders
