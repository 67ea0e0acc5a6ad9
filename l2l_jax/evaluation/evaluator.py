"""The evaluator: upstream's validate() (docs/UPSTREAM.md §7) on the accelerator, with baselines.

    evaluator = Evaluator(model, model_cfg, "two", hard=False, with_baselines=True, mesh=mesh, seed=0,
                          layout="chunk")
    result = evaluator.run(variables, loader)       # an EvalResult; call again with new variables:
    result = evaluator.run(new_variables, loader)   # nothing is compiled twice

An `Evaluator` is built once per model and mode and owns its compiled executables, one per batch signature
(length bucket); `l2l-eval` runs it once, the training loop after every epoch. Metrics are upstream's
(`l2l_jax.metrics`): each video counted once, filler rows never. Beside the policy the registered baselines
run on the same features with the model's own fusion net and classifier (`evaluation.baselines`).

Speed. Executables are compiled ahead of time on the first batch of each signature (timed separately as
`compile_seconds`; the batch in flight is finished first, so compiling never hides run time); batches are
sharded over all devices of the mesh (parameters replicated); results are copied to the host asynchronously
while the next batch runs.

Start clips. Upstream draws a uniform random valid start per video (quirk 8). Here the draw for a video is a
function of (seed, dataset index) only -- ``floor(u * n_valid)`` with u from ``fold_in(key(seed), index)`` --
so results do not depend on batch composition, order or device count. ``run(start_idx=...)``
(``{dataset index: start}``) feeds given starts instead (the tests feed upstream's recorded ones).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from l2l_jax import parallel, variants
from l2l_jax.errors import ConfigError
from l2l_jax.evaluation import baselines
from l2l_jax.metrics import VideoMetrics, fraction_correct, top1_correct, video_map
from l2l_jax.model import PreviewConfig
from l2l_jax.steps import make_eval_step

#: The k-step curves (`baselines.baseline_logits`): mAP after k = 1..E steps.
CURVES = ("policy", "uniform")


# ----------------------------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EvalResult:
    """What one evaluation produced: upstream's four numbers (fractions), baselines, speed, per-video outputs.

    `videos` maps output name -> array with one row per video (ascending dataset index, `videos["index"]`)."""

    avgpool_acc: float
    lstm_acc: float
    avgpool_map: float
    lstm_map: float
    num_videos: int
    videos_per_second: float
    compile_seconds: float
    run_seconds: float
    hard: bool
    variant: str
    episode_length: int
    mean_start: bool
    baselines: dict[str, dict[str, float | None]]
    steps_map: dict[str, list[float | None]]
    clips_consumed: float | None
    mean_length: float
    gt_acc: float | None
    gt_map: float | None
    videos: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> Any:
        """Dict-style access to the summary numbers (``result["avgpool_acc"]``), as the training log reads them."""
        if name == "videos" or not any(f.name == name for f in dataclasses.fields(self)):
            raise KeyError(name)
        return getattr(self, name)

    def __contains__(self, name: object) -> bool:
        return name != "videos" and any(f.name == name for f in dataclasses.fields(self)) \
            and getattr(self, str(name)) is not None

    def metrics(self) -> dict[str, Any]:
        """The JSON-able summary (everything but the per-video arrays)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "videos"}
        out["clips_consumed_per_video"] = out.pop("clips_consumed")
        out["mean_clips_per_video"] = out.pop("mean_length")
        return out


# ----------------------------------------------------------------------------------------------------------
# The jitted computation
# ----------------------------------------------------------------------------------------------------------
def video_keys(key: jax.Array, index: jax.Array) -> jax.Array:
    """One key per row: fold_in(key, dataset index) (filler rows, index -1, get a key too)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index.astype(jnp.uint32))


def draw_starts(keys: jax.Array, mask: jax.Array) -> jax.Array:
    """Uniform start over each row's valid positions (a prefix of the mask): floor(u * n_valid)."""
    n = jnp.sum(mask, axis=1)
    u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
    return jnp.minimum(jnp.floor(u * n), n - 1).astype(jnp.int32)


def make_eval_fn(model: Any, cfg: PreviewConfig, variant: str, *, hard: bool,
                 with_baselines: bool = True) -> Callable[[Mapping, Mapping, jax.Array], dict]:
    """(variables, batch, key) -> per-row outputs: the policy's (via `steps.make_eval_step`), plus the
    baselines' logits and the logits after k = 1..E steps for the policy and uniform sampling."""
    eval_step = make_eval_step(model, hard=hard)
    keep = variants.get(variant).policy_outputs  # kept on the host, beyond index/label/valid

    def fn(variables: Mapping, batch: Mapping, key: jax.Array) -> dict:
        keys = video_keys(key, batch["index"])
        b = dict(batch)
        if "start_idx" not in b:
            b["start_idx"] = draw_starts(jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys), batch["mask"])
        out = eval_step(variables, b, key)
        res = {k: out[k] for k in keep}
        if with_baselines:
            rand_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
            res.update(baselines.baseline_logits(variables["params"], batch, cfg, variant, out, rand_keys))
        return res

    return fn


# ----------------------------------------------------------------------------------------------------------
# The evaluator
# ----------------------------------------------------------------------------------------------------------
class Evaluator:
    """Evaluates one model in one mode on any number of loaders and variables, compiling each batch
    signature once.

    Args:
        model: a `PreviewModel` or `SinglePreviewModel` (`l2l_jax.model.build_model`).
        cfg: the model's `PreviewConfig` (`l2l_jax.config.model_config`).
        variant: a `l2l_jax.variants` name (`variants.NAMES`), the variant `model` was built for.
        hard: upstream's --gt_feature_eval (feed the chosen clips' own features).
        with_baselines: also run the registered baselines and the k-step curves (l2l-eval does; validation
            during training does not).
        mesh: the devices batches are sharded over (default: all, `parallel.make_mesh`).
        seed: fixes the start clips and the random baseline's draws; `key` (a jax key) replaces it.
        layout: ``"dense"`` or ``"chunk"`` (`l2l_jax.config.layout`): how a dense batch is laid out on the
            device; batches the loader already wrote in the chunk layout stay in it.

    `run(variables, loader)` returns an `EvalResult`; its `compile_seconds` counts only what that call compiled.
    """

    def __init__(self, model: Any, cfg: PreviewConfig, variant: str, *, hard: bool = False,
                 with_baselines: bool = True, mesh: Mesh | None = None, seed: int = 0, key: jax.Array | None = None,
                 layout: str = "dense") -> None:
        variants.get(variant)  # a ValueError for an unknown variant
        self.model, self.cfg, self.variant, self.hard = model, cfg, variant, hard
        self.with_baselines, self.layout = with_baselines, layout
        self.mesh = parallel.make_mesh() if mesh is None else mesh
        key = jax.random.key(seed) if key is None else key
        self._key = jax.device_put(key, parallel.replicated(self.mesh))
        self._jitted = jax.jit(make_eval_fn(model, cfg, variant, hard=hard, with_baselines=with_baselines),
                               compiler_options=parallel.compiler_options())
        #: compiled executables by (variables signature, batch signature)
        self._executables: dict[tuple, Any] = {}

    def run(self, variables: Mapping, loader: Iterable[Mapping[str, np.ndarray]], *,
            start_idx: Mapping[int, int] | None = None, progress: bool = True, desc: str = "eval") -> EvalResult:
        """Evaluates `variables` ({"params", "batch_stats"}, host or device arrays) on every batch of `loader`.
        `start_idx` ({dataset index: clip}) overrides the drawn starts; `progress` shows a bar named `desc`."""
        dev_vars = parallel.replicate({"params": variables["params"], "batch_stats": variables["batch_stats"]},
                                      self.mesh)
        vars_sig = _signature(dev_vars)
        host: list[dict[str, np.ndarray]] = []
        pending: tuple[dict, dict] | None = None  # the batch in flight: (device outputs, host metadata)
        compile_s = 0.0
        bar = _progress_bar(loader, desc) if progress else None
        t0 = time.perf_counter()
        for batch in loader:
            batch, meta = _host_part(batch, start_idx)
            dev = _shard(batch, self.mesh, self.layout)
            exe, seconds = self._executable(vars_sig, dev_vars, dev, pending)
            compile_s += seconds
            out = exe(dev_vars, dev, self._key)
            for v in out.values():
                v.copy_to_host_async()
            if pending is not None:
                host.append(_fetch(pending))
            pending = (out, meta)
            if bar is not None:
                bar.update(1)
        if pending is not None:
            host.append(_fetch(pending))
        run_s = time.perf_counter() - t0 - compile_s
        if bar is not None:
            bar.close()
        if not host:
            raise ValueError("the loader yielded no batches")
        return _summarize(_per_video(host), self.cfg, self.variant, self.hard, run_s, compile_s)

    def _executable(self, vars_sig: tuple, dev_vars: Mapping, dev: Mapping,
                    pending: tuple[dict, dict] | None) -> tuple[Any, float]:
        """The executable for this batch's signature and the seconds spent compiling it (0 when known).
        Before compiling, the batch in flight is finished, so compiling never hides its run time."""
        sig = (vars_sig, _signature(dev))
        exe = self._executables.get(sig)
        if exe is not None:
            return exe, 0.0
        if pending is not None:
            jax.block_until_ready(pending[0])
        tc = time.perf_counter()
        exe = self._executables[sig] = self._jitted.lower(dev_vars, dev, self._key).compile()
        return exe, time.perf_counter() - tc


def _signature(tree: Any) -> tuple:
    """Shapes and dtypes of a pytree's leaves, with its structure: what an executable was compiled for."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return (treedef, tuple((np.shape(x), str(x.dtype)) for x in leaves))


def _progress_bar(loader: Any, desc: str) -> Any:
    total = len(loader) if hasattr(loader, "__len__") else None
    return tqdm(total=total, desc=desc, unit="batch", leave=False)


def _host_part(batch: Mapping[str, np.ndarray], start_idx: Mapping[int, int] | None) -> tuple[dict, dict]:
    """The batch to put on the devices (with the given starts, if any) and the per-row values kept on the
    host: index, label, valid, the batch length L and each row's valid clip count."""
    batch = dict(batch)
    if start_idx is not None:
        batch["start_idx"] = _lookup_starts(start_idx, batch["index"])
    meta = {k: np.asarray(batch[k]) for k in ("index", "label", "valid")}
    meta["length"] = np.full(meta["index"].shape, int(batch["length"]), np.int32)
    meta["n_valid"] = np.asarray(batch["mask"]).sum(axis=1).astype(np.int32)
    return batch, meta


def _shard(batch: Mapping[str, np.ndarray], mesh: Mesh, layout: str) -> dict[str, jax.Array]:
    """`parallel.shard_batch` after checking that the rows split evenly over the mesh."""
    n = mesh.devices.size
    rows = np.shape(batch["index"])[0] * jax.process_count()
    if rows % n:
        raise ConfigError(f"--batch_size: a batch of {rows} rows cannot be split over {n} devices "
                          f"(use a --batch_size divisible by {n})")
    return parallel.shard_batch(batch, mesh, layout)


def _fetch(item: tuple[dict, dict]) -> dict[str, np.ndarray]:
    out, meta = item
    return {**parallel.to_host(out), **meta}


def _lookup_starts(starts: Mapping[int, int], index: np.ndarray) -> np.ndarray:
    idx = np.asarray(index)
    real = [int(i) for i in idx if i >= 0]
    missing = [i for i in real if i not in starts]
    if missing:
        raise KeyError(f"start_idx has no start for dataset index {missing[:5]}")
    first = starts[real[0]] if real else 0
    return np.array([starts[int(i)] if i >= 0 else first for i in idx], np.int32)


# ----------------------------------------------------------------------------------------------------------
# Per-video results and metrics
# ----------------------------------------------------------------------------------------------------------
def _per_video(host: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate batches, drop filler rows, keep each dataset index once (the last occurrence, as upstream's
    NaiveMeter), sorted by index. 0-d outputs (single's steps_taken) are broadcast per row."""
    rows = host[0]["index"].shape[0]
    cat = {}
    for k in host[0]:
        parts = [np.broadcast_to(h[k], (rows,)) if np.ndim(h[k]) == 0 else h[k] for h in host]
        cat[k] = np.concatenate(parts, axis=0)
    keep = (cat["index"] >= 0) & (cat["valid"] != 0)
    idx = cat["index"][keep]
    rev_unique, rev_pos = np.unique(idx[::-1], return_index=True)
    pos = np.nonzero(keep)[0][len(idx) - 1 - rev_pos]
    out = {k: v[pos] for k, v in cat.items() if k != "valid"}
    out["index"] = rev_unique.astype(np.int64)
    return out


def clips_consumed(videos: Mapping[str, np.ndarray], cfg: PreviewConfig, variant: str) -> np.ndarray:
    """Distinct clips whose features the policy fed to its LSTM, per video (hard mode): the start (unless
    the mean start) and the clips chosen at steps 0..E-2 (the last step's choice is never consumed); with
    `hard_audio_index` the audio choices count too."""
    e, spec = cfg.episode_length, variants.get(variant)
    keys = spec.chosen
    if cfg.hard_audio_index and spec.chosen_with_audio_index:
        keys += (spec.chosen_with_audio_index,)
    chosen = [videos[k][:, : e - 1] for k in keys]
    if spec.steps_output is not None:  # the episode stopped early: later steps consumed nothing
        steps = videos[spec.steps_output]
        chosen = [np.where(np.arange(e - 1)[None, :] < steps[:, None] - 1, c, -1) for c in chosen]
    if not cfg.mean_feature_as_start:
        chosen.append(videos["start_idx"][:, None])
    sets = np.concatenate(chosen, axis=1)
    return np.array([len(set(r[r >= 0].tolist())) for r in sets], np.int64)


def _safe_map(logits: np.ndarray, labels: np.ndarray, num_classes: int, softmax: str) -> float | None:
    try:
        return video_map(logits, labels, num_classes, softmax)
    except ValueError as e:
        warnings.warn(f"mAP not computed: {e}", stacklevel=3)
        return None


def _summarize(videos: dict[str, np.ndarray], cfg: PreviewConfig, variant: str, hard: bool, run_s: float,
               compile_s: float) -> EvalResult:
    c = cfg.num_classes
    spec = variants.get(variant)
    softmax = spec.metrics_softmax
    labels = videos["label"]
    n = len(labels)
    vm = VideoMetrics(c, variant)
    vm.update(videos["index"], labels, videos["avgpool_logits"], videos["lstm_logits"])
    res = vm.result()
    base: dict[str, dict[str, float | None]] = {}
    for name in baselines.BASELINES:
        if f"{name}_logits" in videos:
            lg = videos[f"{name}_logits"]
            base[name] = {"acc": fraction_correct(top1_correct(lg, labels)),
                          "map": _safe_map(lg, labels, c, softmax)}
    curves: dict[str, list[float | None]] = {}
    for name in CURVES:
        if f"{name}_steps_logits" in videos:
            lg = videos[f"{name}_steps_logits"]
            curves[name] = [_safe_map(lg[:, k], labels, c, softmax) for k in range(lg.shape[1])]
    consumed = float(np.mean(clips_consumed(videos, cfg, variant))) if hard else None
    gt_map = gt_acc = None
    if spec.gt_metrics:  # upstream's meaningless "gt" numbers: the D feature dims as classes (§5)
        gt_acc = fraction_correct(top1_correct(videos["selected_gt_mean"], labels))
        gt_map = _safe_map(videos["selected_gt_mean"], labels, videos["selected_gt_mean"].shape[1], "stable") \
            if labels.max() < videos["selected_gt_mean"].shape[1] else None
    return EvalResult(
        avgpool_acc=res["avgpool_acc"], lstm_acc=res["lstm_acc"], avgpool_map=res["avgpool_map"],
        lstm_map=res["lstm_map"], num_videos=int(res["num_videos"]),
        videos_per_second=n / run_s if run_s > 0 else float("inf"), compile_seconds=compile_s, run_seconds=run_s,
        hard=hard, variant=variant, episode_length=cfg.episode_length,
        mean_start=cfg.mean_feature_as_start, baselines=base, steps_map=curves,
        clips_consumed=consumed, mean_length=float(np.mean(np.minimum(videos["n_valid"], videos["length"]))),
        gt_acc=gt_acc, gt_map=gt_map, videos=videos)


__all__ = ["EvalResult", "Evaluator", "clips_consumed", "draw_starts", "make_eval_fn", "video_keys"]
