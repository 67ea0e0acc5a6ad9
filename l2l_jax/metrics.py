"""Upstream's evaluation metrics in numpy (docs/UPSTREAM.md §7): per-video top-1 accuracy and macro mAP.

No scikit-learn at run time; `average_precision` equals scikit-learn's ``average_precision_score`` (tested).

* **Each video counts once.** Results are keyed by dataset index, as upstream's ``NaiveMeter``: a later value
  for the same index replaces the earlier one; rows with index < 0 or ``valid == 0`` (filler rows) are ignored.
* **Accuracy** = correct videos / videos, one rule everywhere (`fraction_correct`): the Python (float64) division
  ``n_correct / n`` that upstream's validate() returns (its fixture value 3/20 is 0.15). Upstream's per-case
  metric fixtures went through torch float32 (1/6 recorded as 0.1666666716337204); they agree to < 1e-7.
* **mAP** (``aggredate_video_map``): each video's stored logits are averaged (one per video here), videos in
  first-appearance order; scores are a per-row softmax -- two-modality (root): numpy float32 ``exp(x)/sum(exp(x))``
  **without** max subtraction (logits above ~88 overflow; upstream then crashes inside scikit-learn, we raise a
  ValueError saying so); single: the max-subtracted (scipy-style) softmax in float32. Then float64 macro AP over
  **all C columns** of the one-hot ground truth.
* **Binary AP**, no interpolation: scores sorted descending, tied scores form one threshold; at each threshold
  P = TP/(TP+FP), R = TP/#positives; ``AP = sum_k (R_k - R_{k-1}) * P_k``.
* **A class with no positive** among the evaluated videos contributes **AP = 0** to the mean (scikit-learn
  1.9.1 warns and returns 0; scikit-learn 0.2x, upstream's era, returned NaN and so a NaN mean). On the full
  ActivityNet val set every class has positives, so this only matters for subsets.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from l2l_jax import variants

#: The softmaxes of upstream's mAP (docs/UPSTREAM.md §7, quirk 24); each variant names its own
#: (`l2l_jax.variants.Variant.metrics_softmax`).
SOFTMAXES = ("naive", "stable")


def binary_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision of one binary problem (ties grouped, no interpolation); 0 without positives."""
    y_true = np.asarray(y_true).reshape(-1) != 0
    y_score = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true and y_score differ in length: {y_true.shape} vs {y_score.shape}")
    if np.isnan(y_score).any():
        raise ValueError("scores contain NaN")
    n_pos = int(y_true.sum())
    if n_pos == 0:
        return 0.0
    order = np.argsort(-y_score, kind="mergesort")
    s, t = y_score[order], y_true[order]
    # The last index of each group of equal scores is a threshold.
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(t, dtype=np.float64)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, np.ndarray]:
    """Macro AP over all columns of a (N, C) indicator matrix: (mean, per-class APs)."""
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_score.shape:
        raise ValueError(f"expected two (N, C) arrays of equal shape, got {y_true.shape} and {y_score.shape}")
    per_class = np.array([binary_average_precision(y_true[:, c], y_score[:, c]) for c in range(y_true.shape[1])])
    return float(np.mean(per_class)), per_class


def softmax_rows(logits: np.ndarray, kind: str) -> np.ndarray:
    """Per-row float32 softmax as upstream's mAP computes it, returned as float64.

    ``"naive"`` (two-modality): ``exp(x) / sum(exp(x))`` without subtracting the maximum; ``"stable"``
    (single): the max-subtracted one. Rows are done one at a time, as 1-D vectors, so float32 rounding (and
    thus tied scores) does not depend on the number of videos."""
    if kind not in SOFTMAXES:
        raise ValueError(f"unknown softmax {kind!r}; expected one of {SOFTMAXES}")
    x = np.asarray(logits, dtype=np.float32)
    out = np.empty(x.shape, np.float64)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        for i, row in enumerate(x):
            e = np.exp(row - row.max()) if kind == "stable" else np.exp(row)
            out[i] = e / e.sum()
    if kind == "naive" and not np.isfinite(out).all():
        bad = int(np.nonzero(~np.isfinite(out).all(axis=1))[0][0])
        raise ValueError(
            "upstream's float32 softmax without max subtraction overflows on these logits "
            f"(row {bad}, max logit {float(x[bad].max()):.4g}); upstream's mAP fails here too "
            "(docs/UPSTREAM.md §8 quirk 24). Use softmax='stable' to compute an mAP anyway."
        )
    return out


def video_map(logits: np.ndarray, labels: np.ndarray, num_classes: int | None = None,
              softmax: str = "naive") -> float:
    """Upstream's mAP of one logit per video: softmax scores vs one-hot labels, macro over all C classes."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    c = logits.shape[1] if num_classes is None else num_classes
    if logits.ndim != 2 or logits.shape != (labels.size, c):
        raise ValueError(f"expected logits ({labels.size}, {c}), got {logits.shape}")
    onehot = np.zeros((labels.size, c), np.float64)
    onehot[np.arange(labels.size), labels] = 1.0
    return average_precision(onehot, softmax_rows(logits, softmax))[0]


def top1_correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) bool: the first maximal logit is the label (torch ``topk(1)``; ties are measure-zero here)."""
    return np.argmax(np.asarray(logits), axis=1) == np.asarray(labels).reshape(-1)


def fraction_correct(correct: np.ndarray | Iterable[bool]) -> float:
    """Accuracy from one flag per video: ``n_correct / n`` as a Python float division (float64), as upstream's
    validate() returns it. The one place accuracy is computed (policy heads, baselines, validation)."""
    correct = np.fromiter(correct, bool) if not isinstance(correct, np.ndarray) else correct.reshape(-1)
    if correct.size == 0:
        raise ValueError("no videos recorded")
    return int(np.count_nonzero(correct)) / int(correct.size)


class VideoMetrics:
    """Accumulates per-video results over batches, keyed by dataset index (each video counted once).

    `update` takes one batch of model outputs; `result` gives upstream's four numbers (fractions):
    ``avgpool_acc``, ``lstm_acc``, ``avgpool_map``, ``lstm_map``, plus ``num_videos``.
    """

    def __init__(self, num_classes: int, variant: str = variants.DEFAULT.name, softmax: str | None = None):
        self.num_classes = num_classes
        self.softmax = variants.get(variant).metrics_softmax if softmax is None else softmax
        self._label: dict[int, int] = {}
        self._logits: dict[str, dict[int, list[np.ndarray]]] = {"avgpool": {}, "lstm": {}}
        self._correct: dict[str, dict[int, bool]] = {"avgpool": {}, "lstm": {}}

    def update(self, index: np.ndarray, label: np.ndarray, avgpool_logits: np.ndarray,
               lstm_logits: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Records one batch; rows with ``index < 0`` or ``valid == 0`` are skipped."""
        index = np.asarray(index).reshape(-1)
        label = np.asarray(label).reshape(-1)
        keep = index >= 0
        if valid is not None:
            keep &= np.asarray(valid).reshape(-1) != 0
        heads = {"avgpool": np.asarray(avgpool_logits, np.float32), "lstm": np.asarray(lstm_logits, np.float32)}
        for name, logits in heads.items():
            if logits.shape != (index.size, self.num_classes):
                raise ValueError(f"{name} logits: expected {(index.size, self.num_classes)}, got {logits.shape}")
            correct = top1_correct(logits, label)
            for b in np.nonzero(keep)[0]:
                i = int(index[b])
                self._correct[name][i] = bool(correct[b])
                self._logits[name].setdefault(i, []).append(logits[b])
        for b in np.nonzero(keep)[0]:
            self._label[int(index[b])] = int(label[b])

    @property
    def num_videos(self) -> int:
        return len(self._label)

    def accuracy(self, head: str) -> float:
        """Correct videos / distinct videos for ``head`` ("avgpool" or "lstm"), `fraction_correct`."""
        return fraction_correct(self._correct[head].values())

    def mean_ap(self, head: str) -> float:
        """Upstream's video mAP for ``head``: stored logits averaged per video, first-appearance order."""
        store = self._logits[head]
        if not store:
            raise ValueError("no videos recorded")
        order = list(store)
        logits = np.stack([_mean(store[i]) for i in order])
        labels = np.array([self._label[i] for i in order])
        return video_map(logits, labels, self.num_classes, self.softmax)

    def result(self) -> dict[str, float | int]:
        return {
            "avgpool_acc": self.accuracy("avgpool"),
            "lstm_acc": self.accuracy("lstm"),
            "avgpool_map": self.mean_ap("avgpool"),
            "lstm_map": self.mean_ap("lstm"),
            "num_videos": self.num_videos,
        }


def _mean(rows: Iterable[np.ndarray]) -> np.ndarray:
    rows = list(rows)
    return rows[0] if len(rows) == 1 else np.mean(np.stack(rows), axis=0, dtype=np.float32)
