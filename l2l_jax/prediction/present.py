"""What `l2l-predict` shows and writes for each video: top-k classes with probabilities (softmax of the avgpool
head's logits, the prediction `l2l-eval` reports), the seconds of the video the policy previewed at each step,
the clip count and the time spent per stage; as a table, JSON lines and timeline pictures.

Positions are the policy's clip positions: position p is clip ``p * subsample`` (``--feature_subsample``),
which covers seconds ``[c, c + 1)`` (1 s clips); positions past a short video's end (filling it to 10) are
its last clip in the two-modality variant, a random clip in the single-modality one (shown as null).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from l2l_jax import variants
from l2l_jax.outputs import atomic_write_text

CLIP_SECONDS = 1.0


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of one video's logits (float64, max-subtracted)."""
    x = np.asarray(logits, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def clip_of(position: int, num_clips: int, subsample: int = 1, random_fill: bool = False) -> int | None:
    """The clip a policy position shows (module docstring); None: a random fill."""
    clip = int(position) * subsample
    if clip < num_clips:
        return clip
    return None if random_fill else num_clips - 1


def seconds_of(position: int, num_clips: int, subsample: int = 1, random_fill: bool = False) -> float | None:
    """Where that clip starts, in seconds (None: a random fill)."""
    clip = clip_of(position, num_clips, subsample, random_fill)
    return None if clip is None else clip * CLIP_SECONDS


def record(video: str, digest: str, num_clips: int, outputs: Mapping[str, np.ndarray], variant: str,
           classes: Sequence[str] | None, *, top_k: int, subsample: int, mean_start: bool,
           timing: Mapping[str, float], cached: bool, silent: bool) -> dict[str, Any]:
    """One video's JSON record: top-k (softmax of the avgpool logits), all probabilities, the LSTM head's
    prediction, the start and each step's clip and second, ``policy``: the positions and weights as l2l-eval's
    ``--export`` writes them, and ``seconds``: the run's stage times shared out by clip count (`timing`)."""
    probs = softmax(outputs["avgpool_logits"])
    order = np.argsort(-probs, kind="stable")[:top_k]
    name = (lambda i: classes[i]) if classes is not None else str
    steps = []
    spec = variants.get(variant)
    for label, key in spec.timeline_rows:
        for t, p in enumerate(np.asarray(outputs[key]).tolist()):
            if len(steps) <= t:
                steps.append({"step": t + 1})
            steps[t][f"{label}_clip"] = clip_of(p, num_clips, subsample, spec.random_fill)
            steps[t][f"{label}_s"] = seconds_of(p, num_clips, subsample, spec.random_fill)
    if spec.steps_output is not None:  # the episode may stop early: later steps previewed nothing
        steps = steps[: int(outputs[spec.steps_output])]
    start = None if mean_start else seconds_of(int(outputs["start_idx"]), num_clips, subsample, spec.random_fill)
    return {"video": video, "sha256_prefix": digest, "num_clips": int(num_clips),
            "top_k": [{"class": name(int(i)), "index": int(i), "probability": float(probs[i])} for i in order],
            "probabilities": [float(p) for p in probs],
            "lstm_prediction": name(int(np.argmax(outputs["lstm_logits"]))),
            "start_s": start, "steps": steps,
            "policy": {k: np.asarray(outputs[k]).tolist() for k in ("start_idx", *spec.export_outputs)},
            "cached": cached, "no_audio_track": silent,
            "seconds": {k: round(float(v), 6) for k, v in timing.items()}}


def skipped_record(video: str, reason: str) -> dict[str, Any]:
    return {"video": video, "skipped": reason}


def table(records: Sequence[Mapping[str, Any]], top_k: int) -> str:
    """The screen table: per video its clips, top classes and previewed seconds; skipped videos with reasons."""
    lines = []
    for r in records:
        if "skipped" in r:
            lines.append(f"{r['video']}: skipped ({r['skipped']})")
            continue
        tops = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top_k"][:top_k])
        lines.append(f"{r['video']}  ({r['num_clips']} clips{', cached' if r['cached'] else ''}"
                     f"{', no audio track: silence' if r['no_audio_track'] else ''})")
        lines.append(f"  top {len(r['top_k'])}: {tops}")
        for key in [k for k in (r["steps"][0] if r["steps"] else {}) if k.endswith("_s")]:
            secs = " ".join("fill" if s[key] is None else f"{s[key]:g}" for s in r["steps"] if key in s)
            lines.append(f"  {key[:-2]} previewed at s: {secs}")
        if r["start_s"] is not None:
            lines.append(f"  start clip at {r['start_s']:g} s")
    return "\n".join(lines)


def write_jsonl(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> None:
    """One JSON object per line, written atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def plot(path: str | os.PathLike, rec: Mapping[str, Any], variant: str) -> None:
    """A timeline of one video (`l2l_jax.evaluation.plots.timeline`) over its clips, the axis in seconds."""
    from l2l_jax.evaluation import plots  # matplotlib only when pictures are asked for

    spec = variants.get(variant)
    rows = {label: [s[f"{label}_clip"] for s in rec["steps"] if s[f"{label}_clip"] is not None]
            for label, _ in spec.timeline_rows}
    start = None if rec["start_s"] is None else int(rec["start_s"] / CLIP_SECONDS)
    top = rec["top_k"][0]
    plots.timeline(path, num_clips=rec["num_clips"], rows=rows, start=start, seconds_per_clip=CLIP_SECONDS,
                   title=f"{os.path.basename(rec['video'])}: {top['class']} ({top['probability']:.2f})")


__all__ = ["CLIP_SECONDS", "clip_of", "plot", "record", "seconds_of", "skipped_record", "softmax", "table",
           "write_jsonl"]
