"""Validation after every training epoch: upstream's validate() (docs/UPSTREAM.md §7) on the validation
split, through the evaluator, and its lines in ``epoch.log`` (docs/UPSTREAM.md §6 "Logs").

`Validation` is built once per run (its loader and the evaluator's compiled executables are reused every
epoch). The start clips depend on --seed and the video only, so every epoch is measured on the same draws.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from l2l_jax import parallel, variants
from l2l_jax.config import Settings
from l2l_jax.evaluation.evaluator import Evaluator


class Validation:
    """The per-epoch validation of a run: ``validation(variables)`` -> {avgpool_acc, lstm_acc, avgpool_map,
    lstm_map, num_videos, videos_per_s[, gt_map]} (fractions); `lines` gives upstream's epoch.log lines.
    Built once per run: the loader and the evaluator (with its compiled executables) serve every epoch."""

    def __init__(self, settings: Settings, model: Any, source: Any, mesh: Any):
        self.variant = settings.variant.name
        self.loader = settings.eval_loader(source)
        self.evaluator = Evaluator(model, settings.model, self.variant, hard=settings.hard, with_baselines=False,
                                   mesh=mesh, seed=settings.seed, layout=settings.layout)

    def __call__(self, variables: Mapping[str, Any]) -> dict[str, float]:
        res = self.evaluator.run(parallel.to_host(variables), self.loader, progress=parallel.is_main_process(),
                                 desc="validation")
        out = {"avgpool_acc": res.avgpool_acc, "lstm_acc": res.lstm_acc, "avgpool_map": res.avgpool_map,
               "lstm_map": res.lstm_map, "num_videos": res.num_videos, "videos_per_s": res.videos_per_second}
        if res.gt_map is not None:
            out["gt_map"] = res.gt_map
        return out

    def lines(self, epoch: int, result: Mapping[str, float]) -> list[str]:
        """Upstream's validate lines for `epoch` (`validation_lines`)."""
        return validation_lines(self.variant, epoch, result)


def validation_lines(variant: str, epoch: int, r: Mapping[str, float]) -> list[str]:
    """validate()'s lines in epoch.log (docs/UPSTREAM.md §6 "Logs"), in the variant's wording."""
    spec = variants.get(variant)
    lines = [t.format(epoch=epoch, **r) for t in spec.epoch_log_templates]
    if "gt_map" in r and spec.gt_log_template:
        lines.append(spec.gt_log_template.format(epoch=epoch, **r))
    return lines


__all__ = ["Validation", "validation_lines"]
