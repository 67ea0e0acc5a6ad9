"""The trained preview policy on `l2l-predict`'s features: `l2l-eval`'s own evaluator, loader and split reader.

The videos become a split like any other (an upstream pickle naming their cached features, every label 0),
read by `l2l_jax.data.source.open_split` and batched by the settings' evaluation loader; the policy is
`l2l_jax.evaluation.Evaluator` (jitted, batched across videos, both precisions) without the baselines. So a
video's logits are those `l2l-eval` computes from `l2l-extract`'s features of the same file, given the same
start clip.

Start clips (models trained without ``--mean_feature_as_start``): `l2l-eval` draws a video's start from (seed,
its row in the split). A prediction should not depend on which other videos share the command, so here the
row is replaced by the video's content: the same draw (`evaluator.video_keys`, then `draw_starts` over the
valid positions) from ``fold_in(key(seed), content_id)``, content_id = the first 31 bits of the file's SHA-256,
passed to the evaluator as given starts. ``l2l-eval --start_idx_file`` with these starts gives the same
numbers. With ``--mean_feature_as_start`` the start is not used at all.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import parallel, variants
from l2l_jax.config import Settings
from l2l_jax.data.collate import MIN_CLIPS
from l2l_jax.data.source import open_split
from l2l_jax.evaluation.evaluator import Evaluator, draw_starts, video_keys
from l2l_jax.model import build_model
from l2l_jax.prediction.features import Clock
from l2l_jax.video.extract import write_pickle


def content_id(digest: str) -> int:
    """The 31-bit id a video's start draw is keyed by: the first 31 bits of its SHA-256 (hex `digest`)."""
    return int(digest[:8], 16) >> 1


def positions(num_clips: int, subsample: int) -> int:
    """The positions the policy sees of a video of `num_clips` clips: every `subsample`-th clip, and at least
    `MIN_CLIPS` (shorter videos are filled with copies of their last clip, as upstream's collate)."""
    return max(MIN_CLIPS, math.ceil(num_clips / subsample))


def start_clips(seed: int, ids: Sequence[int], valid: Sequence[int]) -> np.ndarray:
    """Each video's start position: l2l-eval's draw (uniform over its `valid` positions) keyed by
    ``fold_in(key(seed), id)`` instead of the video's row in a split."""
    keys = video_keys(jax.random.key(seed), jnp.asarray(np.asarray(ids, np.int64), jnp.uint32))
    keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    n = np.asarray(valid, np.int64)
    mask = (np.arange(int(n.max()))[None, :] < n[:, None]).astype(np.float32)
    return np.asarray(draw_starts(keys, jnp.asarray(mask)))


@dataclasses.dataclass
class PolicyOutputs:
    """Per video (in the order given): the policy's outputs (`variants.Variant.policy_outputs`, one row each)."""

    rows: list[dict[str, np.ndarray]]
    compile_s: float
    run_s: float


class Policy:
    """A trained model ready to run on feature sets: built and compiled once (per batch signature)."""

    def __init__(self, settings: Settings, variables: Mapping[str, Any]):
        self.settings = settings
        self.variables = variables
        self.evaluator = Evaluator(build_model(settings.model, settings.variant), settings.model,
                                   settings.variant.name, hard=settings.hard, with_baselines=False,
                                   mesh=parallel.make_mesh(), seed=settings.seed, layout=settings.layout)

    @property
    def subsample(self) -> int:
        """Every how many clips the loader keeps (``--feature_subsample``)."""
        return self.settings.loader.subsample

    def starts(self, digests: Sequence[str], lengths: Sequence[int]) -> np.ndarray:
        """The start position of each video (`start_clips`)."""
        return start_clips(self.settings.seed, [content_id(d) for d in digests],
                           [positions(t, self.subsample) for t in lengths])

    def run(self, root: Path, names: Sequence[str], lengths: Sequence[int], clock: Clock, *,
            progress: bool = True) -> PolicyOutputs:
        """The policy on the feature files ``root/<modality folder>/<name>.npy`` of each video."""
        starts = self.starts(names, lengths)
        with tempfile.TemporaryDirectory(prefix="l2l-predict-") as tmp:
            pkl = Path(tmp) / "predict.pkl"
            # absolute: a pickle's relative paths are read relative to its own (temporary) folder
            folder = Path(root).absolute() / variants.TEMPLATE_DIR
            write_pickle(pkl, [str(folder / f"{n}.npy") for n in names], [0] * len(names))
            source = open_split(pkl, **{**self.settings.data.split_options(progress=False), "feature_root": None},
                                packed=False, cache=False)
            loader = self.settings.eval_loader(source)
            t0 = time.perf_counter()
            with warnings.catch_warnings():  # no labels: the metrics the evaluator also computes mean nothing
                warnings.filterwarnings("ignore", message="mAP not computed")
                result = self.evaluator.run(self.variables, loader, start_idx=dict(enumerate(starts.tolist())),
                                            progress=progress, desc="policy")
            wall = time.perf_counter() - t0
        clock.policy_s += wall - result.compile_seconds
        clock.compile_s += result.compile_seconds
        v = result.videos
        where = {int(i): r for r, i in enumerate(v["index"])}
        rows = [{k: np.asarray(a[where[i]]) for k, a in v.items()} for i in range(len(names))]
        return PolicyOutputs(rows, result.compile_seconds, wall - result.compile_seconds)


__all__ = ["Policy", "PolicyOutputs", "content_id", "positions", "start_clips"]
