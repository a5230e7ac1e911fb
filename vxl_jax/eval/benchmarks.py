"""Every benchmark by name: its reader (:mod:`vxl_jax.eval.readers`, :mod:`vxl_jax.eval.readers_short`) and
:func:`read_benchmark`, which checks what a reader gives."""

from __future__ import annotations

from vxl_jax.eval.readers import Item, read_longvideobench, read_mlvu, read_niah, read_videomme
from vxl_jax.eval.readers_short import read_mvbench, read_nextqa, read_vnbench

READERS = {"mlvu": read_mlvu, "videomme": read_videomme, "longvideobench": read_longvideobench,
           "vnbench": read_vnbench, "mvbench": read_mvbench, "nextqa": read_nextqa, "niah": read_niah}
BENCHMARKS = ("mlvu", "videomme", "longvideobench", "vnbench", "mvbench", "nextqa", "niah")


def read_benchmark(name: str, path) -> list[Item]:
    """The items of benchmark ``name`` (one of :data:`BENCHMARKS`) read from ``path`` (its annotations), ids
    checked unique."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    items = READERS[name](path)
    if not items:
        raise ValueError(f"{path}: no items")
    seen = set()
    for it in items:
        if it.id in seen:
            raise ValueError(f"{path}: item id {it.id!r} appears twice")
        seen.add(it.id)
    return items
