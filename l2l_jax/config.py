"""The one place where a resolved configuration (`l2l_jax.programs.flags.resolve`) becomes what the programs build:
the model config, the training recipe, the loaders' options, the feature layout and the weights to start
from. l2l-train, l2l-eval, l2l-demo and the benchmarks all call these functions, so a flag means the same
thing in every program.

Facts decided here, once:
- the feature width: 512 for the two-modality model, ``--embedding_size`` for the single variant (§1);
- ``--feature_subsample`` keeps every s-th clip when reading, for the two-modality variant only, as upstream's
  data.py does (§1; the single variant has no such flag);
- the data-loading threads: ``--decode_threads``, capped at `MAX_THREADS`;
- ``--layout auto|dense|chunk`` (`l2l_jax.layouts.resolve`);
- ``--precision exact|fast``: the run's numerics policy (`numerics`, built once here and passed to the model and
  layouts: products, storage, reductions, BatchNorm); in fast mode the loader streams features in 16 bits.
(§N: sections of docs/UPSTREAM.md.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from l2l_jax import numerics as numerics_policy
from l2l_jax import variants
from l2l_jax.errors import ConfigError, WeightsError
from l2l_jax.model import PreviewConfig
from l2l_jax.recipe import Recipe

#: Upper bound of data-loading threads: more only contend for the GIL and the disk.
MAX_THREADS = 16

Config = Mapping[str, Any]


def variant(cfg: Config) -> variants.Variant:
    """The spec of --variant."""
    try:
        return variants.get(cfg["variant"])
    except ValueError as e:
        raise ConfigError(f"--variant: {e}") from None


def feature_width(cfg: Config) -> int:
    """Feature width D of the variant: 512 for two modalities, --embedding_size for single (§1)."""
    return variant(cfg).width(cfg.get("embedding_size"))


def read_subsample(cfg: Config) -> int:
    """Every how many clips the loader keeps when reading features: --subsample_factor under
    --feature_subsample for the two-modality variant, else 1 (§1: upstream's single variant has no data-side
    subsampling)."""
    if cfg.get("feature_subsample") and variant(cfg).data_subsample:
        return int(cfg["subsample_factor"])
    return 1


def numerics(cfg: Config, backend: str | None = None) -> numerics_policy.Numerics:
    """The run's numerics policy from --precision (exact when unset), as it runs on `backend` (default: jax's;
    `numerics.for_backend`)."""
    try:
        policy = numerics_policy.get(cfg.get("precision") or "exact")
    except ValueError as e:
        raise ConfigError(f"--precision: {e}") from None
    if backend is None:
        import jax

        backend = jax.default_backend()
    return numerics_policy.for_backend(policy, backend)


def model_config(cfg: Config, backend: str | None = None) -> PreviewConfig:
    """The policy's switches from the flags (the same for training and evaluation); `backend` is where it will
    run (default: jax's)."""
    return PreviewConfig(num_classes=int(cfg["num_classes"]), episode_length=int(cfg["episode_length"]),
                         mean_feature_as_start=bool(cfg["mean_feature_as_start"]),
                         with_replacement=bool(cfg["with_replacement"]),
                         feature_interpolate=bool(cfg["feature_interpolate"]),
                         subsample_factor=int(cfg["subsample_factor"]), feature_dim=feature_width(cfg),
                         numerics=numerics(cfg, backend))


def recipe(cfg: Config, iters_per_epoch: int) -> Recipe:
    """Upstream's recipe from the flags (§6): milestones and warm-up in epochs times N_it."""
    weights = {}
    if variant(cfg).loss_weights:
        weights = {"avgpool_ce_loss_weight": cfg["avgpool_ce_loss_weight"],
                   "lstm_ce_loss_weight": cfg["lstm_ce_loss_weight"]}
    return Recipe.from_epochs(
        cfg["variant"], iters_per_epoch=iters_per_epoch, milestones_epochs=cfg["milestones"],
        scheduler=cfg["scheduler"], warmup_epochs=cfg["warmup_epochs"], lr=cfg["lr"], momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"], freeze=cfg["freeze_imageAudioNet"],
        with_avgpool_ce_loss=cfg["with_avgpool_ce_loss"], with_lstm_ce_loss=cfg["with_lstm_ce_loss"],
        hard=cfg["gt_feature_eval"], episode_length=cfg["episode_length"], **weights)


def layout(cfg: Config) -> str:
    """The resolved feature layout, ``dense`` or ``chunk`` (``auto``: chunk on CPU, dense on GPU/TPU)."""
    from l2l_jax import layouts

    try:
        return layouts.resolve(cfg.get("layout") or "auto")
    except ValueError as e:
        raise ConfigError(f"--layout: {e}") from None


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
    """The keyword arguments of `l2l_jax.data.BatchLoader` that come from the flags."""

    batch_size: int
    seed: int
    buckets: tuple[int, ...]
    subsample: int
    num_threads: int
    prefetch: int
    chunk_groups: int | None  # one per local device in the chunk layout; None: dense batches
    feature_dtype: str | None  # "float16" in fast precision (features streamed in 16 bits), else as stored

    def kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def loader_options(cfg: Config) -> LoaderOptions:
    """The loaders' options; the same for training, validation and evaluation (only the order differs)."""
    from l2l_jax import layouts

    threads = max(1, min(int(cfg["decode_threads"]), MAX_THREADS))
    return LoaderOptions(batch_size=int(cfg["batch_size"]), seed=int(cfg["seed"]), buckets=tuple(cfg["buckets"]),
                         subsample=read_subsample(cfg), num_threads=threads, prefetch=2,
                         chunk_groups=layouts.chunk_groups(layout(cfg)),
                         feature_dtype=transfer_dtype(cfg))


def transfer_dtype(cfg: Config) -> str | None:
    """The dtype the loader hands features to the device in: float16 when the numerics store features in
    16 bits (the step converts them to its storage dtype), else as stored on disk (None)."""
    return "float16" if numerics(cfg).storage_dtype != np.float32 else None


def split_options(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Keyword arguments of `l2l_jax.data.open_split` from the flags."""
    return {"variant": cfg["variant"], "num_classes": int(cfg["num_classes"]), "feature_root": cfg.get("feature_root"),
            "width": feature_width(cfg), "skip_bad_videos": bool(cfg.get("skip_bad_videos")), "progress": progress}


def sort_by_length(cfg: Config) -> bool:
    """Whether evaluation may visit videos longest first: only when a video's result does not depend on the
    batch it is in (§7 "Eval determinism"): two-modality with s == 1 or without interpolation. The single
    variant's random fills and early break are per batch."""
    return variant(cfg).batch_independent and (not cfg["feature_interpolate"] or int(cfg["subsample_factor"]) == 1)


def make_train_loader(cfg: Config, source: Any) -> Any:
    """The training `BatchLoader` of a split (shuffled, upstream's windows)."""
    from l2l_jax.data import BatchLoader

    return BatchLoader(source, train=True, **loader_options(cfg).kwargs())


def make_eval_loader(cfg: Config, source: Any) -> Any:
    """The evaluation `BatchLoader` of a split (also used for validation during training). With
    `sort_by_length` videos are visited longest first (stable), so each batch is padded little and the
    filler rows completing the last batch fall in the shortest bucket; sorting may gather videos all shorter
    than 10 clips in one batch, which upstream's collate cannot batch (quirk 4): since such results do not
    depend on the batch, that batch is given L = 10, as if a longer video shared it."""
    from l2l_jax.data import BatchLoader

    sort = sort_by_length(cfg)
    return BatchLoader(source, train=False, longest_first=sort, pad_short_batches=sort,
                       **loader_options(cfg).kwargs())


def initial_variables(cfg: Config, log: Any = None) -> dict:
    """The variables a training run starts from: fresh ones with upstream's initial distributions (seeded by
    --seed), then --weights_audioImageModel (fusion net + classifier, two-modality only) and
    --pretrained_model (the whole preview model) over them, as upstream's main.py loads them (§6)."""
    import jax

    from l2l_jax import weights
    from l2l_jax.model import init_variables

    spec = variant(cfg)
    fresh = init_variables(model_config(cfg), spec.name, jax.random.key(int(cfg["seed"])))
    variables = {k: jax.tree_util.tree_map(np.asarray, dict(v)) for k, v in fresh.items()}
    if cfg.get("weights_audioImageModel"):
        path = cfg["weights_audioImageModel"]
        if not spec.fusion:
            if log is not None:
                log.warning(f"--weights_audioImageModel is ignored by the {spec.title} variant, as upstream")
        else:
            if log is not None:
                log.debug(f"Loading model only at: {path}")
            loaded = weights.load(path, "imageaudionet", "--weights_audioImageModel")
            sub = {k: loaded.variables["params"][k] for k in variants.FUSION_MODULES}
            weights.merge(variables["params"], sub, str(loaded.ref.where))
    if cfg.get("pretrained_model"):
        path = cfg["pretrained_model"]
        if log is not None:
            log.debug(f"Loading model only at: {path}")
        loaded = weights.load(path, spec.name, "--pretrained_model")
        weights.merge(variables["params"], loaded.variables["params"], str(loaded.ref.where))
        weights.merge(variables["batch_stats"], loaded.variables.get("batch_stats", {}), str(loaded.ref.where),
                      "batch_stats")
    return variables


def eval_weights(cfg: Config) -> Any:
    """The weights l2l-eval evaluates (--pretrained_model), checked against --num_classes and the variant's
    feature width: a `l2l_jax.weights.Weights`."""
    from l2l_jax import weights

    loaded = weights.load(cfg["pretrained_model"], cfg["variant"], "--pretrained_model")
    if loaded.meta["num_classes"] != int(cfg["num_classes"]):
        raise WeightsError(f"--pretrained_model {loaded.ref.where} has {loaded.meta['num_classes']} classes but "
                           f"--num_classes is {cfg['num_classes']}")
    if loaded.meta["feature_dim"] != feature_width(cfg):
        raise WeightsError(f"--pretrained_model {loaded.ref.where} takes {loaded.meta['feature_dim']}-wide features "
                           f"but --embedding_size is {feature_width(cfg)}")
    return loaded


def check(cfg: Config, program: str) -> None:
    """Every flag problem of a program (``"train"`` or ``"eval"``) as a `ConfigError` naming the flag, before
    any data is read or anything compiles: counts that must be positive, contradictory settings, a missing
    dataset file, a run directory that is a file or cannot be written."""
    from pathlib import Path

    def positive(*names: str) -> None:
        for name in names:
            if name in cfg and cfg[name] is not None and int(cfg[name]) < 1:
                raise ConfigError(f"--{name} {cfg[name]}: must be at least 1")

    positive("batch_size", "episode_length", "num_classes", "subsample_factor", "decode_threads", "print_freq",
             "embedding_size")
    if not 0 <= int(cfg["seed"]) < 2**32:  # numpy's generators refuse negative seeds, jax wraps large ones
        raise ConfigError(f"--seed {cfg['seed']}: must be in [0, 2**32)")
    check_buckets(cfg["buckets"])
    layout(cfg)
    import jax

    if int(cfg["batch_size"]) % jax.device_count():
        raise ConfigError(f"--batch_size {cfg['batch_size']} does not split over {jax.device_count()} devices: "
                          f"use a multiple of {jax.device_count()}")
    datasets = ("train_dataset_file", "test_dataset_file") if program == "train" else ("test_dataset_file",)
    for name in datasets:
        path = cfg.get(name)
        if path and not Path(path).exists():
            raise ConfigError(f"--{name} {path}: no such file or directory")
    if program != "train":
        return
    positive("checkpoint_freq", "keep_checkpoints", "epochs")
    if not cfg.get("train_dataset_file"):
        raise ConfigError("--train_dataset_file is required (an upstream train.pkl or a packed split)")
    if int(cfg["epochs"]) <= int(cfg["start_epoch"]):
        raise ConfigError(f"--epochs {cfg['epochs']} must be larger than --start_epoch {cfg['start_epoch']}")
    if int(cfg["warmup_epochs"]) < 0:
        raise ConfigError(f"--warmup_epochs {cfg['warmup_epochs']}: must be 0 or more")
    if not (cfg["with_avgpool_ce_loss"] or cfg["with_lstm_ce_loss"]):
        raise ConfigError("no loss to train: give --with_avgpool_ce_loss and/or --with_lstm_ce_loss (quirk 23)")
    from l2l_jax.outputs import output_dir

    output_dir(cfg["checkpoint_path"], "--checkpoint_path")  # a file, FIFO or read-only place: refused


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """--buckets: positive and increasing."""
    out = tuple(int(b) for b in buckets)
    if not out or any(b < 1 for b in out) or any(a >= b for a, b in zip(out, out[1:], strict=False)):
        raise ConfigError(f"--buckets {list(out)}: give positive lengths in increasing order")
    return out


__all__ = ["MAX_THREADS", "LoaderOptions", "check", "check_buckets", "eval_weights", "feature_width",
           "initial_variables", "layout", "loader_options", "make_eval_loader", "make_train_loader", "model_config",
           "numerics", "read_subsample", "recipe", "sort_by_length", "split_options", "transfer_dtype", "variant"]
