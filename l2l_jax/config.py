"""Typed settings, built once: a resolved flag dict (`l2l_jax.programs.flags.resolve`) becomes a `Settings` at
the start of a program, and everything after reads that object, never the flags.

    cfg = flags.resolve("train", argv)
    config.check(cfg, "train")              # every flag problem, one line naming the flag, before any work
    settings = config.settings(cfg, "train")

`Settings` holds the model config (`PreviewConfig`, with the run's numerics policy), the resolved feature
layout, the loaders' options (`LoaderOptions`), which splits to open and how (`DataOptions`), the weights to
start from (`WeightsPaths`), and for l2l-train the recipe's inputs (`RecipeOptions`) and the run's options
(`RunOptions`), for l2l-eval its outputs (`EvalOutputs`). l2l-train, l2l-eval, l2l-demo and the benchmarks
all build it here, so a flag means the same thing in every program.

Facts decided here, once:
- the feature width: 512 for the two-modality model, ``--embedding_size`` for the single variant (§1);
- ``--feature_subsample`` keeps every s-th clip when reading, for the two-modality variant only, as upstream's
  data.py does (§1; the single variant has no such flag);
- the data-loading threads: ``--decode_threads``, capped at `MAX_THREADS`;
- ``--layout auto|dense|chunk`` (`l2l_jax.layouts.resolve`);
- ``--precision exact|fast``: the run's numerics policy (`l2l_jax.numerics`, built once here and passed to the
  model and layouts); in fast mode the loader streams features in 16 bits (`Numerics.transfer_dtype`);
- whether evaluation may visit videos longest first (`Settings.sort_by_length`).
(§N: sections of docs/UPSTREAM.md.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from l2l_jax import checks, layouts, storage, variants
from l2l_jax import numerics as numerics_policy
from l2l_jax.data.pipeline import BatchLoader
from l2l_jax.data.source import FeatureSource
from l2l_jax.errors import ConfigError
from l2l_jax.model import PreviewConfig
from l2l_jax.outputs import output_dir
from l2l_jax.recipe import Recipe

#: Upper bound of data-loading threads: more only contend for the GIL and the disk.
MAX_THREADS = 16
#: Upper bound of --batch_size: far above any device's memory for one batch, and below int32 trouble.
MAX_BATCH = checks.MAX_BATCH
#: The programs whose flags become settings.
TRAIN, EVAL = "train", "eval"

#: A resolved flag dict (`l2l_jax.programs.flags.resolve`).
Flags = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
    """The keyword arguments of `l2l_jax.data.pipeline.BatchLoader` that come from the flags; the same for
    training, validation and evaluation (only the order differs)."""

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


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """Which splits a program reads and how they are opened (`l2l_jax.data.source.open_split`)."""

    train_file: str | None  # --train_dataset_file (l2l-train)
    test_file: str | None  # --test_dataset_file
    variant: str
    num_classes: int
    feature_root: str | None
    width: int  # the variant's feature width D
    skip_bad_videos: bool

    def split_options(self, *, progress: bool = True) -> dict[str, Any]:
        """Keyword arguments of `l2l_jax.data.source.open_split`."""
        return {"variant": self.variant, "num_classes": self.num_classes, "feature_root": self.feature_root,
                "width": self.width, "skip_bad_videos": self.skip_bad_videos, "progress": progress}


@dataclasses.dataclass(frozen=True)
class WeightsPaths:
    """The weights a program starts from or evaluates (resolved and loaded by `l2l_jax.weights`)."""

    fusion: str | None  # --weights_audioImageModel: fusion net + classifier (two-modality only)
    pretrained: str | None  # --pretrained_model: the whole preview model


@dataclasses.dataclass(frozen=True)
class RecipeOptions:
    """Upstream's recipe from the flags (§6), all but the iterations per epoch, which the loader decides."""

    variant: str
    milestones: tuple[int, ...]  # in epochs
    scheduler: bool
    warmup_epochs: int
    lr: float
    momentum: float
    weight_decay: float
    freeze: bool  # --freeze_imageAudioNet
    with_avgpool_ce_loss: bool
    with_lstm_ce_loss: bool
    hard: bool  # --gt_feature_eval
    episode_length: int
    loss_weights: tuple[tuple[str, float], ...]  # the variant's loss weight flags, if it has them

    def build(self, iters_per_epoch: int) -> Recipe:
        """The `Recipe`: milestones and warm-up in epochs times N_it."""
        return Recipe.from_epochs(
            self.variant, iters_per_epoch=iters_per_epoch, milestones_epochs=self.milestones,
            scheduler=self.scheduler, warmup_epochs=self.warmup_epochs, lr=self.lr, momentum=self.momentum,
            weight_decay=self.weight_decay, freeze=self.freeze, with_avgpool_ce_loss=self.with_avgpool_ce_loss,
            with_lstm_ce_loss=self.with_lstm_ce_loss, hard=self.hard, episode_length=self.episode_length,
            **dict(self.loss_weights))


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What l2l-train's loop needs beyond model, data and recipe."""

    run_dir: str  # --checkpoint_path (or --workdir)
    epochs: int
    start_epoch: int
    checkpoint_freq: int
    keep_checkpoints: int
    print_freq: int
    visualization: bool
    overwrite: bool = False  # --overwrite: start over instead of resuming (l2l_jax.training.rerun)


@dataclasses.dataclass(frozen=True)
class EvalOutputs:
    """What l2l-eval writes besides its summary, and the start clips it may be given."""

    metrics_json: str | None
    export: str | None
    plot: str | None
    plot_videos: int | None  # None: every video
    start_idx_file: str | None


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a program builds from its flags, typed, built once by `settings`."""

    program: str  # "train" or "eval"
    variant: variants.Variant
    model: PreviewConfig  # with the run's numerics policy
    layout: str  # "dense" or "chunk" (resolved)
    seed: int  # every random draw: initial weights, shuffling, windows, start clips
    hard: bool  # --gt_feature_eval
    loader: LoaderOptions
    data: DataOptions
    weights: WeightsPaths
    recipe: RecipeOptions | None = None  # l2l-train only
    run: RunOptions | None = None  # l2l-train only
    outputs: EvalOutputs | None = None  # l2l-eval only

    @property
    def numerics(self) -> numerics_policy.Numerics:
        """The run's numerics policy (`--precision`, as it runs on the backend)."""
        return self.model.numerics

    @property
    def sort_by_length(self) -> bool:
        """Whether evaluation may visit videos longest first: only when a video's result does not depend on the
        batch it is in (§7 "Eval determinism"): two-modality with s == 1 or without interpolation. The single
        variant's random fills and early break are per batch."""
        return self.variant.batch_independent and (not self.model.feature_interpolate
                                                   or self.model.subsample_factor == 1)

    def train_loader(self, source: FeatureSource) -> BatchLoader:
        """The training `BatchLoader` of a split (shuffled, upstream's windows)."""
        return BatchLoader(source, train=True, **self.loader.kwargs())

    def eval_loader(self, source: FeatureSource) -> BatchLoader:
        """The evaluation `BatchLoader` of a split (also used for validation during training). With
        `sort_by_length` videos are visited longest first (stable), so each batch is padded little and the
        filler rows completing the last batch fall in the shortest bucket; sorting may gather videos all
        shorter than 10 clips in one batch, which upstream's collate cannot batch (quirk 4): since such results
        do not depend on the batch, that batch is given L = 10, as if a longer video shared it."""
        sort = self.sort_by_length
        return BatchLoader(source, train=False, longest_first=sort, pad_short_batches=sort, **self.loader.kwargs())


def settings(cfg: Flags, program: str, backend: str | None = None) -> Settings:
    """The `Settings` of a program (``"train"`` or ``"eval"``) from its resolved flags (`check` them first);
    `backend` is where the model will run (default: jax's), which the numerics policy and ``--layout auto``
    depend on."""
    spec = _variant(cfg)
    width = spec.width(cfg.get("embedding_size"))
    policy = numerics_policy.for_backend(_precision(cfg), backend or jax.default_backend())
    layout = _layout(cfg, backend)
    model = PreviewConfig(num_classes=int(cfg["num_classes"]), episode_length=int(cfg["episode_length"]),
                          mean_feature_as_start=bool(cfg["mean_feature_as_start"]),
                          with_replacement=bool(cfg["with_replacement"]),
                          feature_interpolate=bool(cfg["feature_interpolate"]),
                          subsample_factor=int(cfg["subsample_factor"]), feature_dim=width, numerics=policy)
    # --feature_subsample: every s-th clip when reading, for the variants whose data.py has it (§1)
    subsample = int(cfg["subsample_factor"]) if cfg.get("feature_subsample") and spec.data_subsample else 1
    loader = LoaderOptions(batch_size=int(cfg["batch_size"]), seed=int(cfg["seed"]), buckets=tuple(cfg["buckets"]),
                           subsample=subsample, num_threads=max(1, min(int(cfg["decode_threads"]), MAX_THREADS)),
                           prefetch=2, chunk_groups=layouts.chunk_groups(layout), feature_dtype=policy.transfer_dtype)
    data = DataOptions(train_file=cfg.get("train_dataset_file"), test_file=cfg.get("test_dataset_file"),
                       variant=spec.name, num_classes=int(cfg["num_classes"]), feature_root=cfg.get("feature_root"),
                       width=width, skip_bad_videos=bool(cfg.get("skip_bad_videos")))
    out = Settings(program=program, variant=spec, model=model, layout=layout, seed=int(cfg["seed"]),
                   hard=bool(cfg["gt_feature_eval"]), loader=loader, data=data,
                   weights=WeightsPaths(fusion=cfg.get("weights_audioImageModel") or None,
                                        pretrained=cfg.get("pretrained_model") or None))
    if program == TRAIN:
        weights = (("avgpool_ce_loss_weight", float(cfg["avgpool_ce_loss_weight"])),
                   ("lstm_ce_loss_weight", float(cfg["lstm_ce_loss_weight"]))) if spec.loss_weights else ()
        recipe = RecipeOptions(
            variant=spec.name, milestones=tuple(int(m) for m in cfg["milestones"]), scheduler=bool(cfg["scheduler"]),
            warmup_epochs=int(cfg["warmup_epochs"]), lr=float(cfg["lr"]), momentum=float(cfg["momentum"]),
            weight_decay=float(cfg["weight_decay"]), freeze=bool(cfg["freeze_imageAudioNet"]),
            with_avgpool_ce_loss=bool(cfg["with_avgpool_ce_loss"]), with_lstm_ce_loss=bool(cfg["with_lstm_ce_loss"]),
            hard=bool(cfg["gt_feature_eval"]), episode_length=int(cfg["episode_length"]), loss_weights=weights)
        run = RunOptions(run_dir=str(cfg["checkpoint_path"]), epochs=int(cfg["epochs"]),
                         start_epoch=int(cfg["start_epoch"]), checkpoint_freq=int(cfg["checkpoint_freq"]),
                         keep_checkpoints=int(cfg["keep_checkpoints"]), print_freq=int(cfg["print_freq"]),
                         visualization=bool(cfg["visualization"]), overwrite=bool(cfg.get("overwrite")))
        out = dataclasses.replace(out, recipe=recipe, run=run)
    elif program == EVAL:
        outputs = EvalOutputs(metrics_json=cfg.get("metrics_json"), export=cfg.get("export"), plot=cfg.get("plot"),
                              plot_videos=cfg.get("plot_videos") or None, start_idx_file=cfg.get("start_idx_file"))
        out = dataclasses.replace(out, outputs=outputs)
    return out


def _variant(cfg: Flags) -> variants.Variant:
    """The spec of --variant."""
    try:
        return variants.get(cfg["variant"])
    except ValueError as e:
        raise ConfigError(f"--variant: {e}") from None


def _precision(cfg: Flags) -> numerics_policy.Numerics:
    """The numerics policy of --precision (the default policy when unset)."""
    try:
        return numerics_policy.get(cfg.get("precision") or numerics_policy.DEFAULT.name)
    except ValueError as e:
        raise ConfigError(f"--precision: {e}") from None


def _layout(cfg: Flags, backend: str | None = None) -> str:
    """The resolved feature layout of --layout, ``dense`` or ``chunk`` (``auto``: chunk on CPU, dense on
    GPU/TPU)."""
    try:
        return layouts.resolve(cfg.get("layout") or "auto", backend)
    except ValueError as e:
        raise ConfigError(f"--layout: {e}") from None


def check(cfg: Flags, program: str) -> None:
    """Every flag problem of a program (``"train"`` or ``"eval"``) as a `ConfigError` naming the flag, in one
    line, before any data is read or anything compiles: counts that must be positive or bounded, rates and
    weights that must be finite and in range, contradictory settings, a missing dataset file, a run directory
    that is a file or cannot be written."""

    def positive(*names: str) -> None:
        for name in names:
            if name in cfg and cfg[name] is not None and int(cfg[name]) < 1:
                raise ConfigError(f"--{name} {cfg[name]}: must be at least 1")

    positive("batch_size", "episode_length", "num_classes", "subsample_factor", "decode_threads", "print_freq",
             "embedding_size")
    checks.count_in("--batch_size", int(cfg["batch_size"]), MAX_BATCH)
    checks.seed("--seed", int(cfg["seed"]))  # numpy's generators refuse negative seeds, jax wraps large ones
    check_buckets(cfg["buckets"])
    _variant(cfg)
    _layout(cfg)
    _precision(cfg)
    if int(cfg["batch_size"]) % jax.device_count():
        raise ConfigError(f"--batch_size {cfg['batch_size']} does not split over {jax.device_count()} devices: "
                          f"use a multiple of {jax.device_count()}")
    datasets = ("train_dataset_file", "test_dataset_file") if program == TRAIN else ("test_dataset_file",)
    for name in datasets:
        path = cfg.get(name)
        if path and storage.is_url(path):  # a bucket's object: the bucket must answer, the object exist
            problem = storage.url_problem(path)
            if problem is not None:
                raise ConfigError(f"--{name} {path}: {problem}")
        if path and not storage.path(path).exists():
            raise ConfigError(f"--{name} {path}: no such file or directory")
    if program != TRAIN:
        return
    positive("checkpoint_freq", "keep_checkpoints", "epochs")
    _check_rates(cfg)
    if not cfg.get("train_dataset_file"):
        raise ConfigError("--train_dataset_file is required (an upstream train.pkl or a packed split)")
    if int(cfg["epochs"]) <= int(cfg["start_epoch"]):
        raise ConfigError(f"--epochs {cfg['epochs']} must be larger than --start_epoch {cfg['start_epoch']}")
    if int(cfg["warmup_epochs"]) < 0:
        raise ConfigError(f"--warmup_epochs {cfg['warmup_epochs']}: must be 0 or more")
    if not (cfg["with_avgpool_ce_loss"] or cfg["with_lstm_ce_loss"]):
        raise ConfigError("no loss to train: give --with_avgpool_ce_loss and/or --with_lstm_ce_loss (quirk 23)")
    output_dir(cfg["checkpoint_path"], "--checkpoint_path")  # a file, FIFO or read-only place: refused


#: l2l-train's float flags: name -> `checks.number_in` bounds (lr > 0, momentum in [0, 1), the rest >= 0).
_RATES: dict[str, dict[str, Any]] = {
    "lr": {"lo": 0.0, "hi": None, "lo_open": True},
    "momentum": {"lo": 0.0, "hi": 1.0, "hi_open": True},
    "weight_decay": {"lo": 0.0, "hi": None},
    "avgpool_ce_loss_weight": {"lo": 0.0, "hi": None},
    "lstm_ce_loss_weight": {"lo": 0.0, "hi": None},
}


def _check_rates(cfg: Flags) -> None:
    """Every float flag of l2l-train finite and in its range (`_RATES`)."""
    for name, bounds in _RATES.items():
        if name in cfg:
            checks.number_in(f"--{name}", float(cfg[name]), **bounds)


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """--buckets: positive and increasing."""
    out = tuple(int(b) for b in buckets)
    if not out or any(b < 1 for b in out) or any(a >= b for a, b in zip(out, out[1:], strict=False)):
        raise ConfigError(f"--buckets {list(out)}: give positive lengths in increasing order")
    return out


__all__ = ["EVAL", "MAX_BATCH", "MAX_THREADS", "TRAIN", "DataOptions", "EvalOutputs", "Flags", "LoaderOptions",
           "RecipeOptions", "RunOptions", "Settings", "WeightsPaths", "check", "check_buckets", "settings"]
