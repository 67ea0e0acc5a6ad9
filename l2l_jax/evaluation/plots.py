"""What the policy looked at, as PNGs (matplotlib, Agg backend; `l2l-eval --plot DIR`).

* ``timeline_<id>.png`` per video: clip positions along x; the image and audio choices of each step on two
  rows, numbered by step (1..E), the start clip marked (unless the mean start), padding/fill positions shaded.
* ``map_vs_steps.png``: mAP after k = 1..E steps, the policy vs k uniformly spaced clips
  (`l2l_jax.evaluation.baselines` says how the k-step logits are formed).
* ``curves.png`` of a training run (`training_curves`, written by `l2l-train`): training loss and accuracy
  and the validation accuracy/mAP per epoch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from l2l_jax import variants  # noqa: E402


def timeline(path: str | os.PathLike, *, num_clips: int, rows: Mapping[str, Sequence[int]],
             start: int | None = None, title: str = "", fig: Any = None) -> Path:
    """One video's timeline: for each named row (e.g. "image", "audio") the clip chosen at each step."""
    own = fig is None
    fig = plt.figure(figsize=(8, 1.0 + 0.6 * len(rows))) if own else fig
    fig.clf()
    ax = fig.add_subplot(1, 1, 1)
    names = list(rows)
    for y, name in enumerate(names):
        ax.hlines(y, -0.5, num_clips - 0.5, color="0.85", lw=6, zorder=0)
        pos = list(rows[name])
        ax.scatter(pos, [y] * len(pos), s=80, zorder=2, color=f"C{y}")
        for step, x in enumerate(pos, start=1):
            ax.annotate(str(step), (x, y), xytext=(0, 7 + 6 * (list(pos[:step - 1]).count(x))),
                        textcoords="offset points", ha="center", fontsize=7)
    if start is not None:
        ax.axvline(start, color="k", ls=":", lw=1)
        ax.annotate("start", (start, -0.6), ha="center", fontsize=7)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(-0.5, max(num_clips, 1) - 0.5)
    ax.set_ylim(-0.9, len(names) - 0.3)
    ax.set_xlabel("clip position")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    if own:
        plt.close(fig)
    return path


def map_vs_steps(path: str | os.PathLike, curves: Mapping[str, Sequence[float | None]], title: str = "") -> Path:
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
              max_videos: int | None = None) -> list[Path]:
    """Every video's timeline and the mAP-vs-steps summary for an `EvalResult`; returns the files."""
    out = Path(out_dir)
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


def training_curves(path: str | os.PathLike, epochs: Sequence[Mapping[str, Any]]) -> Path | None:
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


def _save(fig: Any, path: str | os.PathLike) -> Path:
    """Lays out, writes (100 dpi) and closes a figure."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
