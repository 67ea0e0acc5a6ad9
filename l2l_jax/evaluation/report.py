"""What an evaluation shows and writes, apart from computing it: upstream's summary lines, the comparison
table, the metrics JSON, the per-video export (JSON lines) and the video names they carry. The files may be URLs
(``gs://...``): each is one whole-object write (`l2l_jax.outputs.atomic_write_text`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from l2l_jax import storage, variants
from l2l_jax.evaluation import baselines
from l2l_jax.evaluation.evaluator import EvalResult
from l2l_jax.outputs import atomic_write_text


def summary_lines(result: EvalResult, checkpoint: str) -> str:
    """Upstream's validate.py summary, character for character (quirk 25): accuracy x100, two-modality mAP
    as a fraction; the single variant prints its own line, all x100."""
    def pct(x: float | None) -> float:
        return float("nan") if x is None else x * 100

    return variants.get(result.variant).summary_template.format(
        checkpoint=checkpoint, avgpool_acc_pct=result.avgpool_acc * 100, lstm_acc_pct=result.lstm_acc * 100,
        avgpool_map=result.avgpool_map, lstm_map=result.lstm_map, avgpool_map_pct=pct(result.avgpool_map),
        gt_map_pct=pct(result.gt_map))


def comparison_table(result: EvalResult) -> str:
    """The policy and the baselines side by side (accuracy in percent, mAP as a fraction)."""

    def fmt(acc, m):
        return f"{acc * 100:9.2f}  {'n/a' if m is None else f'{m:.4f}':>8}"

    rows = [("policy, avgpool head", fmt(result.avgpool_acc, result.avgpool_map)),
            ("policy, LSTM head", fmt(result.lstm_acc, result.lstm_map))]
    for name, v in result.baselines.items():
        rows.append((baselines.label(name, result.episode_length), fmt(v["acc"], v["map"])))
    lines = [f"{'method':28s} {'acc (%)':>9}  {'mAP':>8}"] + [f"{a:28s} {b}" for a, b in rows]
    if result.hard and result.clips_consumed is not None:
        lines.append(f"hard mode: clip features consumed per video {result.clips_consumed:.2f} "
                     f"(T = {result.mean_length:.2f} clips per video on average)")
    lines.append(f"{result.num_videos} videos, {result.videos_per_second:.1f} videos/s "
                 f"(+ {result.compile_seconds:.1f} s compiling)")
    return "\n".join(lines)


def video_names(source: Any) -> dict[int, str] | None:
    """Dataset index -> video name (the feature file's stem) of a split, per-file (`data.FileSource`) or
    packed (`data.PackedSource`, names kept by l2l-pack); None for a source without names."""
    names = getattr(source, "names", None)
    if names is None:
        return None
    return {int(i): str(name) for i, name in zip(source.ids, names, strict=True)}


def _file(path: str | os.PathLike) -> storage.AnyPath:
    """`path` as a path object, its local parent directory made (a bucket has no folders to make)."""
    p = storage.path(path)
    if not storage.is_url(p):
        p.parent.mkdir(parents=True, exist_ok=True)
    return p


def write_metrics_json(result: EvalResult, path: str | os.PathLike, **extra: Any) -> storage.AnyPath:
    """The summary (`EvalResult.metrics`) and `extra` (e.g. ``checkpoint=``) as an indented JSON object."""
    path = _file(path)
    atomic_write_text(path, json.dumps({**result.metrics(), **extra}, indent=1) + "\n")
    return path


def write_export(result: EvalResult, path: str | os.PathLike,
                 names: Mapping[int, str] | None = None) -> storage.AnyPath:
    """One JSON line per video: id, name (when `names` has it), label, prediction (avgpool head), LSTM
    prediction, start clip, clip count, per-step clip indices and (two-modality) modality weights. Written
    atomically (`l2l_jax.outputs.atomic_write_text`)."""
    v = result.videos
    path = _file(path)
    pred = np.argmax(v["avgpool_logits"], axis=1)
    lstm_pred = np.argmax(v["lstm_logits"], axis=1)
    lines = []
    for r, i in enumerate(v["index"]):
        rec: dict[str, Any] = {"id": int(i), "label": int(v["label"][r]), "prediction": int(pred[r]),
                               "lstm_prediction": int(lstm_pred[r]), "start_idx": int(v["start_idx"][r]),
                               "num_clips": int(min(v["n_valid"][r], v["length"][r]))}
        if names is not None and int(i) in names:
            rec["name"] = names[int(i)]
        for key in variants.get(result.variant).export_outputs:
            rec[key] = v[key][r].tolist()
        lines.append(json.dumps(rec) + "\n")
    atomic_write_text(path, "".join(lines))
    return path


__all__ = ["comparison_table", "summary_lines", "video_names", "write_export", "write_metrics_json"]
