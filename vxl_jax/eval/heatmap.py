"""The needle test's accuracy grid (needle depth x haystack length): a markdown table and a PNG heatmap
(matplotlib, the optional ``eval`` extra) drawn like the paper's figure: x = frames in the video,
y = needle depth, red (0 %) to green (100 %), each cell labelled with its accuracy."""

from __future__ import annotations

import os
import sys

import numpy as np

from vxl_jax.eval.results import ResultsFile
from vxl_jax.runtime.atomic_io import atomic_path, write_text


def niah_grid(records: list[dict]) -> tuple[list[int], list[float], np.ndarray, np.ndarray]:
    """Results of a niah run -> (lengths, depths, accuracy float [depths, lengths] (nan: no item), counts)."""
    lengths = sorted({int(r["groups"]["length"]) for r in records})
    depths = sorted({float(r["groups"]["depth"]) for r in records})
    correct = np.zeros((len(depths), len(lengths)))
    counts = np.zeros((len(depths), len(lengths)), np.int64)
    for r in records:
        i, j = depths.index(float(r["groups"]["depth"])), lengths.index(int(r["groups"]["length"]))
        correct[i, j] += bool(r["correct"])
        counts[i, j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(counts > 0, correct / np.maximum(counts, 1), np.nan)
    return lengths, depths, acc, counts


def grid_table(lengths, depths, acc: np.ndarray, counts: np.ndarray | None = None) -> str:
    """Markdown: one row per depth, one column per length, accuracy in percent, and a mean row/column."""
    head = "| depth \\ frames | " + " | ".join(str(n) for n in lengths) + " | mean |"
    lines = [head, "|---" * (len(lengths) + 2) + "|"]
    fmt = lambda v: "–" if np.isnan(v) else f"{100 * v:.0f}%"  # noqa: E731
    for i, d in enumerate(depths):
        row = [fmt(v) for v in acc[i]]
        lines.append(f"| {d:g}% | " + " | ".join(row) + f" | {fmt(np.nanmean(acc[i]))} |")
    col_means = [fmt(np.nanmean(acc[:, j])) for j in range(len(lengths))]
    lines.append("| mean | " + " | ".join(col_means) + f" | {fmt(np.nanmean(acc))} |")
    if counts is not None:
        lines.append(f"\n({int(counts.min())}–{int(counts.max())} items per cell, {int(counts.sum())} in all)")
    return "\n".join(lines)


def draw_heatmap(path, lengths, depths, acc: np.ndarray, title: str = "Needle in a video haystack") -> str:
    """Write the heatmap PNG to ``path`` and return it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import LinearSegmentedColormap
    except ImportError:
        raise ImportError("drawing the heatmap needs matplotlib: pip install 'vxl-jax[eval]'") from None
    cmap = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
    fig, ax = plt.subplots(figsize=(1.1 * len(lengths) + 2.5, 0.55 * len(depths) + 1.8))
    shown = np.ma.masked_invalid(acc)
    im = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("Frames in the video")
    ax.set_ylabel("Needle depth (%)")
    ax.set_title(title)
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not np.isnan(acc[i, j]):
                ax.text(j, i, f"{100 * acc[i, j]:.0f}", ha="center", va="center", fontsize=9, color="black")
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    try:
        with atomic_path(path, "heatmap") as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return str(path)


def write_niah_report(out_dir: str, echo: bool = True) -> str:
    """heatmap.md (the table) and heatmap.png (when matplotlib is installed) from OUT/results.jsonl; returns
    the table (printed with ``echo``)."""
    lengths, depths, acc, counts = niah_grid(ResultsFile(os.path.join(out_dir, "results.jsonl")).records)
    table = grid_table(lengths, depths, acc, counts)
    write_text(os.path.join(out_dir, "heatmap.md"), table + "\n", what="heatmap table")
    if echo:
        print(table)
    try:
        png = draw_heatmap(os.path.join(out_dir, "heatmap.png"), lengths, depths, acc)
        if echo:
            print(f"heatmap: {png}")
    except ImportError as e:
        print(f"note: {e}", file=sys.stderr)
    return table
