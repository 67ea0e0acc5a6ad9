"""What the policy looked at, as PNGs (matplotlib, Agg backend; `l2l-eval --plot DIR`).

* ``timeline_<id>.png`` per video: clip positions along x; the image and audio choices of each step on two
  rows, numbered by step (1..E; the numbers of neighbouring or repeated clips staggered upwards so each stays
  readable), the start clip marked (unless the mean start); optionally clip ranges shaded (`timeline`'s
  ``spans``, e.g. a synthetic video's true class segment).
* ``map_vs_steps.png``: mAP after k = 1..E steps, the policy vs k uniformly spaced clips
  (`l2l_jax.evaluation.baselines` says how the k-step logits are formed).
* ``curves.png`` of a training run (`training_curves`, written by `l2l-train`): training loss and accuracy
  and the validation accuracy/mAP per epoch.

Every file may be a URL (``gs://...``, e.g. a training run directory on a bucket): a figure is rendered into
memory and written whole (`l2l_jax.storage.write_bytes`: one upload, or locally a temporary file renamed).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from l2l_jax import storage, variants  # noqa: E402

#: Step labels on a timeline: font size (points), the height of one stacking level and the first label's
#: offset above its point (points), and the gap kept between two labels on one level (points).
LABEL_SIZE, LABEL_STEP, LABEL_BASE, LABEL_GAP = 7, 8.0, 7.0, 1.5


def label_levels(x_pts: Sequence[float], widths: Sequence[float], gap: float = LABEL_GAP) -> list[int]:
    """A stacking level (0 = lowest) for each label centred at `x_pts` (points) of `widths` (points): every label
    takes the lowest level where it overlaps no label already placed, so labels of neighbouring (or the same)
    clips are staggered upwards instead of printed over each other. Placed left to right (ties in input order)."""
    placed: list[list[tuple[float, float]]] = []  # per level: (left, right) of the labels on it
    levels = [0] * len(x_pts)
    for i in sorted(range(len(x_pts)), key=lambda k: (x_pts[k], k)):
        left, right = x_pts[i] - widths[i] / 2 - gap / 2, x_pts[i] + widths[i] / 2 + gap / 2
        level = 0
        while level < len(placed) and any(a < right and left < b for a, b in placed[level]):
            level += 1
        if level == len(placed):
            placed.append([])
        placed[level].append((left, right))
        levels[i] = level
    return levels


def _text_width(text: str, size: float = LABEL_SIZE) -> float:
    """A label's width in points (digits are about 0.6 em wide)."""
    return 0.62 * size * len(text) + 2.0


def timeline(path: str | os.PathLike, *, num_clips: int, rows: Mapping[str, Sequence[int]],
             start: int | None = None, title: str = "", fig: Any = None,
             spans: Sequence[tuple[float, float, str]] = (),
             seconds_per_clip: float | None = None) -> storage.AnyPath:
    """One video's timeline: for each named row (e.g. "image", "audio") the clip chosen at each step, numbered
    by step; labels of neighbouring or repeated clips are staggered upwards (`label_levels`). `spans` shades
    clip ranges ``(first, stop, text)`` (e.g. a dataset's true class segment), named in a legend. With
    `seconds_per_clip` the axis reads in seconds (clip k starts at k * seconds_per_clip)."""
    own = fig is None
    fig = plt.figure(figsize=(8, 2.2)) if own else fig
    fig.clf()
    names = list(rows)
    width_in = fig.get_size_inches()[0]
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlim(-0.5, max(num_clips, 1) - 0.5)
    ax.set_yticks(range(len(names)), names)
    fig.tight_layout()
    # label positions in points along x (the axes' width does not depend on the figure's height)
    x0, x1 = ax.get_position().x0 * width_in * 72, ax.get_position().x1 * width_in * 72
    to_pts = lambda x: x0 + (x + 0.5) / max(num_clips, 1) * (x1 - x0)  # noqa: E731
    levels = {}
    for name in names:
        pos = [int(x) for x in rows[name]]
        levels[name] = label_levels([to_pts(x) for x in pos], [_text_width(str(k + 1)) for k in range(len(pos))])
    top = max((max(v, default=0) for v in levels.values()), default=0)
    # one row (a unit of y): its points and their stacked labels; the axes span len(names) + 0.9 units
    row_in = max(0.45, (LABEL_BASE + LABEL_STEP * (top + 1) + 10) / 72)
    fig.set_size_inches(width_in, 0.8 + (len(names) + 0.9) * row_in)
    colours: dict[str, str] = {}  # one colour per kind of span, named once in the legend
    for first, stop, text in spans:
        new = text not in colours
        colours.setdefault(text, "0.6" if text == "distractor" else f"C{2 + len(colours) % 6}")
        ax.axvspan(first - 0.5, stop - 0.5, color=colours[text], alpha=0.2, lw=0, label=text if new else None,
                   zorder=0)
    for y, name in enumerate(names):
        ax.hlines(y, -0.5, num_clips - 0.5, color="0.85", lw=6, zorder=1)
        pos = [int(x) for x in rows[name]]
        ax.scatter(pos, [y] * len(pos), s=60, zorder=3, color=f"C{y}", edgecolors="white", linewidths=0.5)
        for step, (x, level) in enumerate(zip(pos, levels[name], strict=True), start=1):
            ax.annotate(str(step), (x, y), xytext=(0, LABEL_BASE + LABEL_STEP * level), textcoords="offset points",
                        ha="center", va="bottom", fontsize=LABEL_SIZE, zorder=4,
                        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5, "shrinkA": 0, "shrinkB": 4}
                        if level else None)
    if start is not None:
        ax.axvline(start, color="k", ls=":", lw=1)
        ax.annotate("start", (start, -0.6), ha="center", fontsize=7)
    ax.set_ylim(-0.9, len(names))
    if seconds_per_clip is None:
        ax.set_xlabel("clip position")
    else:
        ax.xaxis.set_major_formatter(lambda x, _: f"{x * seconds_per_clip:g}")
        ax.set_xlabel("time (s)")
    ax.set_title(title, fontsize=9)
    if spans:
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(spans), fontsize=7, frameon=False,
                  borderaxespad=0.2)
    for _ in range(3):  # grow the figure until each row has the height its stacked labels need
        fig.tight_layout()
        short = (len(names) + 0.9) * row_in - ax.get_position().height * fig.get_size_inches()[1]
        if short <= 0.01:
            break
        fig.set_size_inches(width_in, fig.get_size_inches()[1] + short)
    try:
        return write_figure(fig, path, dpi=80)
    finally:
        if own:
            plt.close(fig)


def map_vs_steps(path: str | os.PathLike, curves: Mapping[str, Sequence[float | None]],
                 title: str = "") -> storage.AnyPath:
    """mAP against the number of steps (1..E), one line per curve."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, ys in curves.items():
        ks = [k + 1 for k, y in enumerate(ys) if y is not None]
        ax.plot(ks, [y for y in ys if y is not None], marker="o", label=name)
    ax.set_xlabel("number of steps / clips")
    ax.set_ylabel("mAP")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def write_all(result: Any, out_dir: str | os.PathLike, names: Mapping[int, str] | None = None,
              max_videos: int | None = None) -> list[storage.AnyPath]:
    """Every video's timeline and the mAP-vs-steps summary for an `EvalResult`; returns the files."""
    out = storage.path(out_dir)
    if not storage.is_url(out):  # a bucket has no folders to make
        out.mkdir(parents=True, exist_ok=True)
    v, spec = result.videos, variants.get(result.variant)
    written = []
    curves = {"policy": result.steps_map.get("policy", []), "uniform sampling": result.steps_map.get("uniform", [])}
    written.append(map_vs_steps(out / "map_vs_steps.png", curves, f"{result.num_videos} videos"))
    fig = plt.figure(figsize=(8, 2.2))
    pred = np.argmax(v["avgpool_logits"], axis=1)
    n = len(v["index"]) if max_videos is None else min(max_videos, len(v["index"]))
    try:
        for r in range(n):
            i = int(v["index"][r])
            steps = int(v[spec.steps_output][r]) if spec.steps_output else None
            rows = {label: v[key][r][:steps] for label, key in spec.timeline_rows}
            start = None if result.mean_start else int(v["start_idx"][r])
            name = names.get(i, str(i)) if names else str(i)
            title = f"{name}: label {int(v['label'][r])}, predicted {int(pred[r])}"
            num = int(max(v["n_valid"][r], 1))
            written.append(timeline(out / f"timeline_{i:06d}.png", num_clips=num, rows=rows, start=start,
                                    title=title, fig=fig))
    finally:
        plt.close(fig)
    return written


def training_curves(path: str | os.PathLike, epochs: Sequence[Mapping[str, Any]]) -> storage.AnyPath | None:
    """The training loss, the training accuracy and the validation accuracy/mAP per epoch, from a run's
    ``"kind": "epoch"`` records (``metrics.jsonl``, `l2l_jax.training.log`); None without records."""
    if not epochs:
        return None
    x = [r["epoch"] for r in epochs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(x, [r["train/loss"] for r in epochs], "o-", label="loss")
    axes[0].plot(x, [r["train/avgpool_ce"] for r in epochs], ".--", label="avgpool CE")
    axes[0].plot(x, [r["train/lstm_ce"] for r in epochs], ".--", label="LSTM CE")
    axes[0].set_title("training loss")
    axes[1].plot(x, [r["train/avgpool_acc"] for r in epochs], "o-", label="avgpool")
    axes[1].plot(x, [r["train/lstm_acc"] for r in epochs], "o-", label="LSTM")
    axes[1].set_title("training accuracy")
    for key, label in (("val/avgpool_acc", "avgpool acc"), ("val/lstm_acc", "LSTM acc"),
                       ("val/avgpool_map", "avgpool mAP"), ("val/lstm_map", "LSTM mAP")):
        pts = [(r["epoch"], r[key]) for r in epochs if key in r]
        if pts:
            axes[2].plot(*zip(*pts, strict=True), "o-", label=label)
    axes[2].set_title("validation")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return _save(fig, path)


def write_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 100) -> storage.AnyPath:
    """Renders `fig` into memory in the format of `path`'s suffix (PNG without one) and writes it whole to
    `path`, a local file or a URL (`l2l_jax.storage.write_bytes`); returns the path."""
    p = storage.path(path)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=p.suffix[1:].lower() or "png")
    storage.write_bytes(p, buf.getvalue())
    return p


def _save(fig: Any, path: str | os.PathLike) -> storage.AnyPath:
    """Lays out, writes (100 dpi) and closes a figure."""
    try:
        fig.tight_layout()
        return write_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)
