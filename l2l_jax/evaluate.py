"""`l2l-eval`: upstream's evaluation (validate.py) on the accelerator, with baselines and what the policy chose.

    l2l-eval --test_dataset_file val.pkl --feature_root DIR --num_classes 200 --episode_length 10 \
        --pretrained_model model_final.pth --with_replacement --mean_feature_as_start --feature_interpolate \
        --subsample_factor 1 --compute_mAP [--gt_feature_eval] [--metrics_json m.json] [--export e.jsonl] [--plot DIR]

Metrics are upstream's (UPSTREAM.md section 7, `l2l_jax.metrics`): each video counted once, filler rows never.
Beside the policy, three baselines run on the same features with the model's own fusion net and classifier
(`l2l_jax.baselines`): E uniformly spaced clips, E random clips, all clips averaged.

Speed. One executable per length bucket (compiled ahead of time, timed separately as `compile_seconds`);
batches sharded over all local devices (parameters replicated); results are copied to the host
asynchronously while the next batch runs. With s == 1 (or no interpolation) a two-modality video's result does
not depend on the batch it is in (section 7, "Eval determinism"), so `make_eval_loader` sorts videos by length
and batches stay short; otherwise (s > 1, or the single variant, whose early break and random fills are
per batch) upstream's batches are kept.

Start clips. Upstream draws a uniform random valid start per video (quirk 8). Here the draw for a video is a
function of (seed, dataset index) only -- ``floor(u * n_valid)`` with u from ``fold_in(key(seed), index)`` --
so results do not depend on batch composition, order or device count. ``--start_idx_file F.json``
(``{"<dataset index>": start, ...}``) feeds given starts instead (the tests feed upstream's recorded ones).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from l2l_jax import baselines as bl
from l2l_jax import parallel
from l2l_jax.metrics import SOFTMAX_OF_VARIANT, VideoMetrics, fraction_correct, top1_correct, video_map
from l2l_jax.model import PreviewConfig, build_model
from l2l_jax.steps import make_eval_step

#: Per-video outputs kept on the host (beyond index/label/valid, which come from the batch).
POLICY_KEYS = {"two": ("avgpool_logits", "lstm_logits", "image_idx", "audio_idx", "modality_w", "start_idx"),
               "single": ("avgpool_logits", "lstm_logits", "idx", "start_idx", "selected_gt_mean", "steps_taken")}


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
# Devices
# ----------------------------------------------------------------------------------------------------------
def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """`parallel.shard_batch` after checking that the rows split evenly over the mesh."""
    n = mesh.devices.size
    rows = np.shape(batch["index"])[0] * jax.process_count()
    if rows % n:
        raise ValueError(f"a batch of {rows} rows cannot be split over {n} devices "
                         f"(use a --batch_size divisible by {n})")
    return parallel.shard_batch(batch, mesh)


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
    keep = POLICY_KEYS[variant]

    def fn(variables: Mapping, batch: Mapping, key: jax.Array) -> dict:
        keys = video_keys(key, batch["index"])
        b = dict(batch)
        if "start_idx" not in b:
            b["start_idx"] = draw_starts(jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys), batch["mask"])
        out = eval_step(variables, b, key)
        res = {k: out[k] for k in keep}
        if with_baselines:
            rand_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
            res.update(bl.baseline_logits(variables["params"], batch, cfg, variant, out, rand_keys))
        return res

    return fn


# ----------------------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------------------
def sort_by_length_ok(cfg: PreviewConfig, variant: str) -> bool:
    """Whether per-video results are independent of batch composition (section 7): two-modality with s == 1
    or without interpolation. The single variant's fills and early break are per batch."""
    return variant == "two" and (not cfg.feature_interpolate or cfg.subsample_factor == 1)


def make_eval_loader(source: Any, *, batch_size: int, sort_by_length: bool, seed: int = 0,
                     buckets: Sequence[int] | None = None, subsample: int = 1, num_threads: int = 2,
                     prefetch: int = 4, chunk_groups: int | None = None) -> Any:
    """An evaluation `BatchLoader` over `source`; with `sort_by_length` videos are visited longest first
    (stable), so each batch is padded little and the filler rows completing the last batch (valid = 0) fall
    in the shortest bucket. Sorting may gather videos all shorter than 10 clips in one batch, which upstream's
    collate cannot batch (quirk 4); since such results do not depend on the batch, that batch is given
    L = 10, exactly as if a longer video shared it. Batches come in the chunk layout of `chunk_groups`
    (default: one group per local device, as `evaluate` shards them)."""
    from l2l_jax.data import DEFAULT_BUCKETS, BatchLoader

    class _Loader(BatchLoader):
        def order(self, epoch: int) -> np.ndarray:
            return self._eval_order

    loader = _Loader(source, batch_size=batch_size, train=False, seed=seed,
                     buckets=DEFAULT_BUCKETS if buckets is None else buckets, subsample=subsample,
                     pad_short_batches=sort_by_length, num_threads=num_threads, prefetch=max(prefetch, num_threads),
                     chunk_groups=jax.local_device_count() if chunk_groups is None else chunk_groups)
    lengths = np.asarray(loader.lengths)
    loader._eval_order = (np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(len(lengths)))
    return loader


# ----------------------------------------------------------------------------------------------------------
# The evaluator
# ----------------------------------------------------------------------------------------------------------
#: Compiled eval executables per (model type, config, variant, mode, baselines, devices), then per batch
#: signature, shared by every `evaluate` call of the process (training validates after every epoch).
_EXECUTABLES: dict[tuple, dict[tuple, Any]] = {}


def evaluate(model: Any, variables: Mapping, loader: Iterable[Mapping[str, np.ndarray]], *, hard: bool = False,
             seed: int = 0, key: jax.Array | None = None, mesh: Mesh | None = None, progress: bool = True,
             variant: str | None = None, num_classes: int | None = None, cfg: PreviewConfig | None = None,
             start_idx: Mapping[int, int] | None = None, with_baselines: bool = True,
             desc: str = "eval") -> EvalResult:
    """Evaluates `model` (a PreviewModel or SinglePreviewModel) with `variables` on every batch of `loader`.

    `hard` is upstream's --gt_feature_eval; `seed` fixes the start clips and the random baseline;
    `key` (default ``key(seed)``) replaces the seed; `mesh` (default: all devices) shards the batches;
    `start_idx` ({dataset index: clip}) overrides the drawn starts; `num_classes`, if given, must match the
    model. Returns an `EvalResult` (also readable as ``result["avgpool_acc"]``); the training loop calls this
    after every epoch."""
    cfg = model.cfg if cfg is None else cfg
    if num_classes is not None and num_classes != cfg.num_classes:
        raise ValueError(f"num_classes {num_classes} != the model's {cfg.num_classes}")
    variant = ("single" if type(model).__name__ == "SinglePreviewModel" else "two") if variant is None else variant
    mesh = parallel.make_mesh() if mesh is None else mesh
    dev_vars = parallel.replicate({"params": variables["params"], "batch_stats": variables["batch_stats"]}, mesh)
    key = jax.random.key(seed) if key is None else key
    key = jax.device_put(key, parallel.replicated(mesh))
    fn_key = (type(model).__name__, cfg, variant, hard, with_baselines, tuple(mesh.devices.flat))
    jitted = jax.jit(make_eval_fn(model, cfg, variant, hard=hard, with_baselines=with_baselines),
                     compiler_options=parallel.compiler_options())
    compiled = _EXECUTABLES.setdefault(fn_key, {})  # kept across calls: validation after every epoch
    compile_s = 0.0
    host: list[dict[str, np.ndarray]] = []
    pending: tuple[dict, dict] | None = None

    def collect(item: tuple[dict, dict]) -> None:
        out, meta = item
        host.append({**parallel.to_host(out), **meta})

    total = len(loader) if hasattr(loader, "__len__") else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="batch", leave=False)
    t0 = time.perf_counter()
    for batch in loader:
        batch = dict(batch)
        if start_idx is not None:
            batch["start_idx"] = _lookup_starts(start_idx, batch["index"])
        meta = {k: np.asarray(batch[k]) for k in ("index", "label", "valid")}
        meta["length"] = np.full(meta["index"].shape, int(batch["length"]), np.int32)
        meta["n_valid"] = np.asarray(batch["mask"]).sum(axis=1).astype(np.int32)
        dev = shard_batch(batch, mesh)
        sig = tuple((k, v.shape, str(v.dtype)) for k, v in sorted(dev.items()))
        exe = compiled.get(sig)
        if exe is None:
            if pending is not None:  # finish the batch in flight first, so compiling never hides its run time
                jax.block_until_ready(pending[0])
            tc = time.perf_counter()
            exe = compiled[sig] = jitted.lower(dev_vars, dev, key).compile()
            compile_s += time.perf_counter() - tc
        out = exe(dev_vars, dev, key)
        for v in out.values():
            v.copy_to_host_async()
        if pending is not None:
            collect(pending)
        pending = (out, meta)
        if bar is not None:
            bar.update(1)
    if pending is not None:
        collect(pending)
    run_s = time.perf_counter() - t0 - compile_s
    if bar is not None:
        bar.close()
    if not host:
        raise ValueError("the loader yielded no batches")
    videos = _per_video(host)
    return _summarize(videos, cfg, variant, hard, run_s, compile_s)


def _lookup_starts(starts: Mapping[int, int], index: np.ndarray) -> np.ndarray:
    idx = np.asarray(index)
    real = [int(i) for i in idx if i >= 0]
    missing = [i for i in real if i not in starts]
    if missing:
        raise KeyError(f"start_idx has no start for dataset index {missing[:5]}")
    first = starts[real[0]] if real else 0
    return np.array([starts[int(i)] if i >= 0 else first for i in idx], np.int32)


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
    e = cfg.episode_length
    if variant == "two":
        chosen = [videos["image_idx"][:, : e - 1]]
        if cfg.hard_audio_index:
            chosen.append(videos["audio_idx"][:, : e - 1])
    else:
        steps = videos["steps_taken"]
        chosen = [np.where(np.arange(e - 1)[None, :] < steps[:, None] - 1, videos["idx"][:, : e - 1], -1)]
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
    softmax = SOFTMAX_OF_VARIANT[variant]
    labels = videos["label"]
    n = len(labels)
    vm = VideoMetrics(c, variant)
    vm.update(videos["index"], labels, videos["avgpool_logits"], videos["lstm_logits"])
    res = vm.result()
    base: dict[str, dict[str, float | None]] = {}
    for name in bl.BASELINES:
        if f"{name}_logits" in videos:
            lg = videos[f"{name}_logits"]
            base[name] = {"acc": fraction_correct(top1_correct(lg, labels)),
                          "map": _safe_map(lg, labels, c, softmax)}
    curves: dict[str, list[float | None]] = {}
    for name in ("policy", "uniform"):
        if f"{name}_steps_logits" in videos:
            lg = videos[f"{name}_steps_logits"]
            curves[name] = [_safe_map(lg[:, k], labels, c, softmax) for k in range(lg.shape[1])]
    consumed = float(np.mean(clips_consumed(videos, cfg, variant))) if hard else None
    gt_map = gt_acc = None
    if variant == "single":  # upstream's meaningless "gt" numbers: the D feature dims as classes (section 5)
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


# ----------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------
def summary_lines(result: EvalResult, checkpoint: str) -> str:
    """Upstream's validate.py summary, character for character (quirk 25): accuracy x100, two-modality mAP
    as a fraction; the single variant prints its own line, all x100."""
    if result.variant == "single":
        gt = float("nan") if result.gt_map is None else result.gt_map * 100
        return (f"Testing Summary for checkpoint: {checkpoint}\nvideo accuracy/mAP/gt mAP: "
                f"{result.avgpool_acc * 100} \t {result.avgpool_map * 100} \t {gt}\n")
    return (f"Testing Summary for checkpoint: {checkpoint}\nAvgpool Acc: {result.avgpool_acc * 100} \n"
            f" LSTM Acc: {result.lstm_acc * 100} \n Avgpool mAP: {result.avgpool_map} \n LSTM mAP: {result.lstm_map}")


def comparison_table(result: EvalResult) -> str:
    """The policy and the baselines side by side (accuracy in percent, mAP as a fraction)."""
    e = result.episode_length

    def fmt(acc, m):
        return f"{acc * 100:9.2f}  {'n/a' if m is None else f'{m:.4f}':>8}"

    rows = [("policy, avgpool head", fmt(result.avgpool_acc, result.avgpool_map)),
            ("policy, LSTM head", fmt(result.lstm_acc, result.lstm_map))]
    names = {"uniform": f"{e} uniformly spaced clips", "random": f"{e} random clips", "all": "all clips averaged"}
    for k, v in result.baselines.items():
        rows.append((names.get(k, k), fmt(v["acc"], v["map"])))
    lines = [f"{'method':28s} {'acc (%)':>9}  {'mAP':>8}"] + [f"{a:28s} {b}" for a, b in rows]
    if result.hard and result.clips_consumed is not None:
        lines.append(f"hard mode: clip features consumed per video {result.clips_consumed:.2f} "
                     f"(T = {result.mean_length:.2f} clips per video on average)")
    lines.append(f"{result.num_videos} videos, {result.videos_per_second:.1f} videos/s "
                 f"(+ {result.compile_seconds:.1f} s compiling)")
    return "\n".join(lines)


def write_export(result: EvalResult, path: str | os.PathLike, names: Mapping[int, str] | None = None) -> Path:
    """One JSON line per video: id, label, prediction (avgpool head), per-step clip indices, modality weights."""
    v = result.videos
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pred = np.argmax(v["avgpool_logits"], axis=1)
    lstm_pred = np.argmax(v["lstm_logits"], axis=1)
    with open(path, "w") as f:
        for r, i in enumerate(v["index"]):
            rec: dict[str, Any] = {"id": int(i), "label": int(v["label"][r]), "prediction": int(pred[r]),
                                   "lstm_prediction": int(lstm_pred[r]), "start_idx": int(v["start_idx"][r]),
                                   "num_clips": int(min(v["n_valid"][r], v["length"][r]))}
            if names is not None and int(i) in names:
                rec["name"] = names[int(i)]
            if result.variant == "two":
                rec["image_idx"] = v["image_idx"][r].tolist()
                rec["audio_idx"] = v["audio_idx"][r].tolist()
                rec["modality_w"] = v["modality_w"][r].tolist()
            else:
                rec["idx"] = v["idx"][r].tolist()
                rec["steps_taken"] = int(v["steps_taken"][r])
            f.write(json.dumps(rec) + "\n")
    return path


# ----------------------------------------------------------------------------------------------------------
# Loading a model
# ----------------------------------------------------------------------------------------------------------
def find_checkpoint(path: str | os.PathLike) -> tuple[str, Path, int | None]:
    """What `--pretrained_model` names: ``(kind, path, step)`` with kind ``"pth"`` (an upstream file),
    ``"model_dir"`` (l2l-convert's directory) or ``"run"`` (a training run directory, `run_checkpoint`
    layout: ``<run>/checkpoints/<step>/``; given the run directory, the newest step; given
    ``<run>/checkpoints`` or one step's directory, that one). A directory with none of these but ``*.pth``
    files gives the newest by ctime (upstream's rule)."""
    from l2l_jax import model_dir as ck
    from l2l_jax.run_checkpoint import RunCheckpoints, find_run_checkpoint

    p = Path(path).absolute()
    if not p.exists():
        raise FileNotFoundError(f"--pretrained_model {p}: no such file or directory")
    if p.is_file():
        return "pth", p, None
    if ck.is_model_dir(p):
        return "model_dir", p, None
    run = find_run_checkpoint(p)
    if run is not None:
        run_dir, step = run
        if step is None:
            ckpts = RunCheckpoints(run_dir)
            step = ckpts.latest_step()
            ckpts.close()
        return "run", run_dir, step
    pths = sorted(p.glob("*.pth"), key=lambda q: q.stat().st_ctime)
    if pths:
        return "pth", pths[-1], None
    raise ValueError(f"--pretrained_model {p}: not a converted model directory or a training run directory, "
                     "and no *.pth file there")


def load_model(path: str | os.PathLike, variant: str) -> tuple[dict, dict[str, Any], Path]:
    """(variables, meta, resolved path) for `--pretrained_model` (see `find_checkpoint`); upstream files are
    converted on load and strictly checked."""
    from l2l_jax import model_dir as ck
    from l2l_jax.run_checkpoint import read_run_params

    kind, p, step = find_checkpoint(path)
    if kind == "pth":
        from convert.core import variables_from_state_dict
        from convert.torch_io import read_state_dict

        sd, extras = read_state_dict(p)
        variables, meta = variables_from_state_dict(sd, variant, str(p), extras)
        return variables, meta, p
    if kind == "model_dir":
        variables, meta = ck.load_model_dir(p)
        if meta["variant"] != variant:
            raise ValueError(f"{p} holds a {meta['variant']!r} model; --variant is {variant!r}")
        return variables, meta, p
    variables, step = read_run_params(p, step)  # host numpy: any device count
    kernel = variables["params"]["net_classifier"]["classifier"]["kernel"]
    where = p / "checkpoints" / str(step)
    meta = {"variant": variant, "num_classes": int(kernel.shape[1]), "feature_dim": int(kernel.shape[0]),
            "source": str(where), "step": step}
    return variables, meta, where


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def preview_config(cfg: Any) -> PreviewConfig:
    """The model switches from the resolved flags."""
    return PreviewConfig(num_classes=cfg.num_classes, episode_length=cfg.episode_length,
                         mean_feature_as_start=bool(cfg.mean_feature_as_start),
                         with_replacement=bool(cfg.with_replacement), feature_interpolate=bool(cfg.feature_interpolate),
                         subsample_factor=cfg.subsample_factor,
                         feature_dim=cfg.embedding_size if cfg.variant == "single" else 512)


def read_start_file(path: str | os.PathLike) -> dict[int, int]:
    """``{"<dataset index>": start clip}`` from a JSON file (test-only: feeds recorded upstream starts)."""
    try:
        raw = json.loads(Path(path).read_text())
        return {int(k): int(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError) as e:
        raise SystemExit(f"--start_idx_file {path}: cannot read a JSON object of index -> start ({e})") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `l2l-eval`; returns the exit status."""
    from l2l_jax.cli import resolve
    from l2l_jax.data import DatasetError, open_split

    cfg = resolve("eval", argv, description=__doc__.split("\n\n")[0])
    if not cfg.pretrained_model:
        print("No model for validation - failing!!!")
        return 0
    if not cfg.test_dataset_file:
        raise SystemExit("l2l-eval: --test_dataset_file is required")
    variant = cfg.variant
    try:
        variables, meta, ckpt = load_model(cfg.pretrained_model, variant)
    except (OSError, ValueError) as e:
        raise SystemExit(f"l2l-eval: {e}") from None
    if meta["num_classes"] != cfg.num_classes:
        raise SystemExit(f"l2l-eval: {ckpt} has {meta['num_classes']} classes but --num_classes is "
                         f"{cfg.num_classes}")
    pcfg = preview_config(cfg)
    try:
        source = open_split(cfg.test_dataset_file, variant=variant, num_classes=cfg.num_classes,
                            feature_root=cfg.feature_root, width=pcfg.feature_dim,
                            skip_bad_videos=bool(cfg.skip_bad_videos), progress=True)
    except (DatasetError, OSError) as e:
        raise SystemExit(f"l2l-eval: {e}") from None
    parallel.init_distributed(cfg)
    mesh = parallel.make_mesh()
    sub = cfg.subsample_factor if (cfg.feature_subsample and variant == "two") else 1
    loader = make_eval_loader(source, batch_size=cfg.batch_size, sort_by_length=sort_by_length_ok(pcfg, variant),
                              seed=cfg.seed, buckets=cfg.buckets, subsample=sub,
                              num_threads=max(1, min(int(cfg.decode_threads), 8)))
    starts = read_start_file(cfg.start_idx_file) if cfg.get("start_idx_file") else None
    model = build_model(pcfg, variant)
    result = evaluate(model, variables, loader, hard=bool(cfg.gt_feature_eval), seed=cfg.seed, mesh=mesh,
                      variant=variant, cfg=pcfg, start_idx=starts)
    print(summary_lines(result, str(cfg.pretrained_model)))
    print(comparison_table(result))
    if cfg.metrics_json:
        out = Path(cfg.metrics_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**result.metrics(), "checkpoint": str(ckpt)}, indent=1) + "\n")
    names = _video_names(source)
    if cfg.export:
        write_export(result, cfg.export, names)
    if cfg.plot:
        from l2l_jax import plots

        plots.write_all(result, cfg.plot, names, max_videos=cfg.plot_videos or None)
    return 0


def _video_names(source: Any) -> dict[int, str] | None:
    """Dataset index -> video name (the feature file's stem), for per-file sources."""
    paths = getattr(getattr(source, "index", None), "paths", None)
    if paths is None:
        return None
    return {int(i): Path(p[0]).stem for i, p in zip(source.ids, paths, strict=True)}


if __name__ == "__main__":
    sys.exit(main())

