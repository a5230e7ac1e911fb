"""Atomic writes under faults (vxl_jax/runtime/atomic_io.py): a file-size limit, SIGKILL midway, a read-only or
missing folder, a path that is a folder. Each leaves the previous file (or nothing) and fails in one line; the
process-level faults run in a child process (the helper is standard library only, so the children start fast),
the file-size limit also through infer.py --save-memory (the issue's case: exit 2, one line, no partial file)."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest

from vxl_jax.runtime.atomic_io import WriteError, atomic_open, check_target, write_text

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _child(code: str, *, env=None, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _temporaries(d) -> list[str]:
    return sorted(f for f in os.listdir(d) if ".tmp" in f)


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    p = tmp_path / "f.json"
    write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(p, "w") as f:
            f.write("half")
            raise RuntimeError("the writer failed")
    assert p.read_text() == "old" and _temporaries(tmp_path) == []


def test_targets_are_checked_before_writing(tmp_path):
    with pytest.raises(WriteError, match="does not exist .create it first"):
        check_target(tmp_path / "no" / "such" / "f.mem")
    assert not (tmp_path / "no").exists()  # never created silently
    with pytest.raises(WriteError, match="is a folder"):
        write_text(tmp_path, "x")
    assert os.listdir(tmp_path) == []


def test_file_size_limit_is_one_line_and_leaves_the_old_file(tmp_path):
    r = _child(f"""
        import resource, sys
        from vxl_jax.runtime.atomic_io import WriteError, write_text
        write_text({str(tmp_path / 'f.bin')!r}, 'old')
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        try:
            write_text({str(tmp_path / 'f.bin')!r}, 'x' * 100000)
        except WriteError as e:
            print(e); sys.exit(2)
        """)
    assert r.returncode == 2, r.stderr
    assert r.stdout.count("\n") == 1 and "File too large" in r.stdout
    assert (tmp_path / "f.bin").read_text() == "old" and _temporaries(tmp_path) == []


def test_sigkill_midway_leaves_the_old_file_and_the_next_write_cleans_up(tmp_path):
    p = tmp_path / "m.mem"
    write_text(p, "old")
    r = _child(f"""
        import os, signal
        from vxl_jax.runtime.atomic_io import atomic_open
        with atomic_open({str(p)!r}, "w") as f:
            f.write("half a file"); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    assert r.returncode == -signal.SIGKILL
    assert p.read_text() == "old" and len(_temporaries(tmp_path)) == 1  # the killed process's temporary
    write_text(p, "new")
    assert p.read_text() == "new" and _temporaries(tmp_path) == []


def test_sigkill_in_a_memory_save_leaves_nothing_half_written(tmp_path):
    """A memory save killed after its temporary holds part of the file: the target stays as it was (absent)."""
    mem = tmp_path / "v.mem"
    r = _child(f"""
        import os, signal
        import numpy as np
        from vxl_jax.infer import memory_file
        from vxl_jax.infer.demo import default_model

        def half_then_kill(tensors, path, metadata=None):
            with open(path, "wb") as f:
                f.write(b"\\0" * 1000); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        vx = default_model()
        frames = np.zeros((6, 64, 64, 3), np.uint8)
        res = vx.prefill(np.array([1, 5, -200, 7], np.int32), frames, ratio=8)
        memory_file.save_file = half_then_kill
        vx.save_memory({str(mem)!r}, res.video_memory)
        """, env={"JAX_PLATFORMS": "cpu"}, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not mem.exists() and len(_temporaries(tmp_path)) == 1


def test_read_only_folder_is_refused_in_one_line():
    """As root, permissions do not apply: the child drops to nobody (after its imports) and writes into a folder
    it may read but not write."""
    base = tempfile.mkdtemp(prefix="vxl-ro-", dir="/tmp")
    ro = pathlib.Path(base) / "ro"
    try:
        ro.mkdir()
        write_text(ro / "f.json", "old")
        os.chmod(base, 0o755)
        ro.chmod(0o555)
        r = _child(f"""
            import os, sys
            from vxl_jax.runtime.atomic_io import WriteError, write_text
            if os.geteuid() == 0:
                os.setgid(65534); os.setuid(65534)
            try:
                write_text({str(ro / 'f.json')!r}, 'new')
            except WriteError as e:
                print(e); sys.exit(2)
            """)
        assert r.returncode == 2, r.stderr
        assert r.stdout.count("\n") == 1 and "is not writable" in r.stdout
        assert (ro / "f.json").read_text() == "old" and _temporaries(ro) == []
    finally:
        ro.chmod(0o755)
        shutil.rmtree(base)


def test_infer_save_memory_past_a_file_size_limit(tmp_path):
    """The issue's case: ``ulimit -f 60`` and a ~420 KB memory -> one line, exit 2, no partial file."""
    from vxl_jax.media.video import write_sample_video

    video = write_sample_video(tmp_path / "clip.mp4", num_frames=12, size=(160, 96))
    mem = tmp_path / "m.mem"
    r = _child(f"""
        import resource, sys
        from vxl_jax.cli.infer import main
        resource.setrlimit(resource.RLIMIT_FSIZE, (60 * 1024, 60 * 1024))
        sys.exit(main(["--video", {str(video)!r}, "--frames", "12", "--question", "What?", "--max-new-tokens", "2",
                       "--quiet", "--save-memory", {str(mem)!r}, "--compile-cache", "none"]))
        """, env={"JAX_PLATFORMS": "cpu"}, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and "File too large" in r.stderr and str(mem) in r.stderr, r.stderr
    assert not mem.exists() and _temporaries(tmp_path) == []


@pytest.fixture(scope="module")
def torch_folder(tmp_path_factory, demo_vx):
    from vxl_jax.convert import export_torch
    from vxl_jax.convert.folder import save_converted

    d = tmp_path_factory.mktemp("kill")
    save_converted(d / "ours", demo_vx.model)
    export_torch(str(d / "ours"), str(d / "torch"), progress=False)
    return d


def _kill_midway(code: str, parent: pathlib.Path, name: str, seed: int) -> int:
    """Start ``code`` in a child; once anything of ``name`` (its temporary or itself) appears in ``parent``, SIGKILL
    it after a random delay (``seed``). -> the child's exit status."""
    import random
    import time

    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"})
    deadline = time.time() + 240
    while p.poll() is None and time.time() < deadline:
        if any(f == name or f.startswith(f".{name}.") for f in os.listdir(parent)):
            time.sleep(random.Random(seed).uniform(0.0, 0.3))
            break
        time.sleep(0.005)
    p.kill()
    return p.wait()


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_mid_conversion_or_export_leaves_nothing_or_a_complete_folder(torch_folder, seed):
    """A conversion (torch -> ours) or a converted-folder save (training's export) killed at a random point: the
    destination is absent or complete (its fingerprint matches its parameters); the next run succeeds."""
    from vxl_jax.config import tiny_config
    from vxl_jax.convert import convert
    from vxl_jax.convert import fingerprint as F
    from vxl_jax.convert.folder import save_converted

    d = torch_folder
    name = f"conv{seed}" if seed == 0 else f"export{seed}"
    work = (f"from vxl_jax.convert import convert; convert({str(d / 'torch')!r}, {str(d / name)!r}, progress=False)"
            if seed == 0 else
            "from vxl_jax.infer.api import VideoXL; from vxl_jax.convert.folder import save_converted; "
            f"save_converted({str(d / name)!r}, VideoXL.load({str(d / 'ours')!r}).model)")
    code = _kill_midway(work, d, name, seed)
    if (d / name).exists():  # finished before the kill: complete
        assert F.read_record(d / name) == F.of_folder(d / name, tiny_config()), code
        return
    assert code == -signal.SIGKILL
    if seed == 0:
        convert(str(d / "torch"), str(d / name), progress=False)
    else:
        from vxl_jax.infer.api import VideoXL

        save_converted(d / name, VideoXL.load(d / "ours").model)
    assert F.read_record(d / name) == F.read_record(d / "ours")
    assert not [f for f in os.listdir(d) if f.startswith(f".{name}.")]  # the killed run's temporary is gone
