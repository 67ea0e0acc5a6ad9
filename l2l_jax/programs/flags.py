"""Command-line flags shared by `l2l-train` and `l2l-eval`: one table, upstream's names and defaults; and
the error boundary of every program (`run_program`).

Every flag of upstream's `main.py` / `validate.py` (docs/UPSTREAM.md §6 "Option defaults") is accepted
with its name and meaning, so upstream's README commands run with only the program name changed. Our own
flags follow. Precedence: table default < `--config FILE` (a Python file with `get_config()` returning an
`ml_collections.ConfigDict`) < flags given on the command line. What a resolved configuration builds
(model config, recipe, loaders, weights) is decided in `l2l_jax.config`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from l2l_jax import layouts, numerics, variants
from l2l_jax.data.buckets import DEFAULT_BUCKETS
from l2l_jax.errors import ConfigError, L2LError
from l2l_jax.layouts.chunk import CHUNK

TRAIN, EVAL = "train", "eval"
BOTH = (TRAIN, EVAL)


def _bool(help_: str, programs=BOTH) -> dict:
    return {"action": "store_true", "default": False, "help": help_, "programs": programs}


# name -> argparse keyword arguments + "programs" (which programs accept it) + optional "ignored" note.
FLAGS: dict[str, dict[str, Any]] = {
    # ---- upstream's flags (names, defaults and meanings from the two-modality opts.py) ----
    "num_classes": {"type": int, "default": 400, "help": "number of action classes C", "programs": BOTH},
    "train_dataset_file": {"type": str, "default": None, "help": "pickle of (feature_paths, labels) to train on",
                           "programs": (TRAIN,)},
    "test_dataset_file": {"type": str, "default": None, "help": "pickle of (feature_paths, labels) to evaluate on",
                          "programs": BOTH},
    "hidden_size": {"type": int, "default": 512, "help": "accepted and ignored, as upstream (H is 1024)",
                    "programs": BOTH, "ignored": True},
    "episode_length": {"type": int, "default": 10, "help": "E: number of preview steps", "programs": BOTH},
    "with_avgpool_ce_loss": _bool("train with cross entropy on the averaged (avgpool) prediction", (TRAIN,)),
    "with_lstm_ce_loss": _bool("train with cross entropy on the last step's LSTM prediction", (TRAIN,)),
    "with_replacement": _bool("upstream's inverted name (quirk 1): when SET, a clip is never chosen twice"),
    "gt_feature_eval": _bool("hard mode: feed the chosen clip's own features instead of the soft mix"),
    "mean_feature_as_start": _bool("start from the mean feature of the video instead of a random clip"),
    "avgpool_ce_loss_weight": {"type": float, "default": 1.0, "help": "weight of the avgpool loss",
                               "programs": (TRAIN,)},
    "lstm_ce_loss_weight": {"type": float, "default": 1.0, "help": "weight of the LSTM loss", "programs": (TRAIN,)},
    "weights_audioImageModel": {"type": str, "default": "",
                                "help": "fusion net + classifier weights: upstream .pth or a converted directory",
                                "programs": BOTH},
    "pretrained_model": {"type": str, "default": None,
                         "help": "preview model: upstream .pth, a converted directory or a training run directory",
                         "programs": BOTH},
    "checkpoint_freq": {"type": int, "default": 3, "help": "save a checkpoint every N epochs (epoch 0 included)",
                        "programs": (TRAIN,)},
    "checkpoint_path": {"type": str, "default": ".", "help": "run directory: checkpoints, logs, metrics",
                        "programs": (TRAIN,)},
    "subsample_factor": {"type": int, "default": 1, "help": "s for --feature_interpolate / --feature_subsample",
                         "programs": BOTH},
    "feature_subsample": _bool("keep every s-th clip when reading features (two-modality)"),
    "feature_interpolate": _bool("attend over features subsampled by s and linearly interpolated back"),
    "start_epoch": {"type": int, "default": 0, "help": "number of the first epoch (names and logs only)",
                    "programs": (TRAIN,)},
    "epochs": {"type": int, "default": 40, "help": "number of training epochs", "programs": (TRAIN,)},
    "milestones": {"type": int, "nargs": "+", "default": [20, 40], "help": "epochs at which lr is multiplied by 0.1",
                   "programs": (TRAIN,)},
    "batch_size": {"type": int, "default": 16, "help": "global batch size (split over all devices)",
                   "programs": BOTH},
    "lr": {"type": float, "default": 0.01, "help": "base learning rate", "programs": (TRAIN,)},
    "momentum": {"type": float, "default": 0.9, "help": "SGD (Nesterov) momentum", "programs": (TRAIN,)},
    "weight_decay": {"type": float, "default": 1e-4, "help": "weight decay (added to the gradient)",
                     "programs": (TRAIN,)},
    "scheduler": _bool("linear warm-up then multistep decay (per iteration); inert in l2l-eval"),
    "warmup_epochs": {"type": int, "default": 0, "help": "warm-up length in epochs (with --scheduler)",
                      "programs": (TRAIN,)},
    "freeze_imageAudioNet": _bool("upstream's freeze recipe: fusion net lr 0, classifier 0.1*lr, "
                                  "modality attention never updated", (TRAIN,)),
    "decode_threads": {"type": int, "default": 24, "help": "data-loading worker threads", "programs": BOTH},
    "visualization": _bool("write TensorBoard event files to <checkpoint_path>/tensorboard", (TRAIN,)),
    "print_freq": {"type": int, "default": 20, "help": "log every N iterations", "programs": BOTH},
    "compute_mAP": _bool("accepted for compatibility: mAP is always computed (quirk 23)"),
    # single-modality upstream flags
    "embedding_size": {"type": int, "default": 512, "help": "D: feature width of the single-modality variant",
                       "programs": BOTH},
    "imageKey": _bool("single variant: accepted and ignored, as upstream"),
    "normalization": _bool("single variant: accepted and ignored, as upstream"),
    "weights_classifier": {"type": str, "default": "", "help": "single variant: accepted and ignored, as upstream",
                           "programs": BOTH, "ignored": True},
    # ---- ours ----
    "config": {"type": str, "default": None, "help": "configs/<name>.py with get_config(); flags override it",
               "programs": BOTH},
    "variant": {"choices": list(variants.NAMES), "default": variants.DEFAULT.name,
                "help": "two-modality (image+audio) or single-modality model", "programs": BOTH},
    "seed": {"type": int, "default": 0, "help": "seed of every random draw (shuffling, windows, start clips)",
             "programs": BOTH},
    "workdir": {"type": str, "default": None, "help": "alias of --checkpoint_path", "programs": (TRAIN,)},
    "feature_root": {"type": str, "default": None,
                     "help": f"replace every feature path's prefix (before {variants.TEMPLATE_DIR}) with this "
                             "directory",
                     "programs": BOTH},
    "skip_bad_videos": _bool("drop videos whose files fail validation instead of stopping"),
    "buckets": {"type": int, "nargs": "+", "default": list(DEFAULT_BUCKETS),
                "help": "length buckets: batches are padded up to the next one (one compile each)",
                "programs": BOTH},
    "layout": {"choices": list(layouts.LAYOUTS), "default": "auto",
               "help": "feature layout on the device: dense (B, L, F) batches, or each video's real clips in "
                       f"chunks of {CHUNK}; auto = chunk on CPU, dense on GPU/TPU (same numbers to float32 rounding)",
               "programs": BOTH},
    "precision": {"choices": list(numerics.PRECISIONS), "default": numerics.DEFAULT.name,
                  "help": "exact: float32 products as upstream (every parity test); fast: bfloat16 operands with "
                          "float32 accumulation and 16-bit features, for GPU/TPU", "programs": BOTH},
    "debug": {"action": "store_true", "default": False,
              "help": "show the full traceback of an input error instead of a one-line message", "programs": BOTH},
    "keep_checkpoints": {"type": int, "default": 3, "help": "keep the newest k checkpoints", "programs": (TRAIN,)},
    "overwrite": _bool("start over: remove the checkpoints (and settings record) of an earlier run in "
                       "--checkpoint_path instead of resuming them; without it a rerun with other settings (or fewer "
                       "--epochs than its checkpoints hold) is refused", (TRAIN,)),
    "metrics_json": {"type": str, "default": None, "help": "write the evaluation results as JSON here",
                     "programs": (EVAL,)},
    "export": {"type": str, "default": None, "help": "write one JSON line per video (chosen clips, weights)",
               "programs": (EVAL,)},
    "plot": {"type": str, "default": None, "help": "write timeline and mAP-vs-steps PNGs to this directory",
             "programs": (EVAL,)},
    "start_idx_file": {"type": str, "default": None,
                       "help": "testing: JSON {dataset index: start clip} to use instead of random starts",
                       "programs": (EVAL,)},
    "plot_videos": {"type": int, "default": 32, "help": "with --plot: timelines of the first N videos (0: all)",
                    "programs": (EVAL,)},
    "coordinator_address": {"type": str, "default": None,
                            "help": "multi-host: HOST:PORT of process 0, which serves the coordinator there; "
                                    "give all three of --coordinator_address, --num_processes, --process_id or none",
                            "programs": BOTH},
    "num_processes": {"type": int, "default": None, "help": "multi-host: number of processes (1: a single process)",
                      "programs": BOTH},
    "process_id": {"type": int, "default": None, "help": "multi-host: this process's id, 0 .. num_processes-1",
                   "programs": BOTH},
    "coordinator_timeout": {"type": float, "default": 300.0,
                            "help": "multi-host: seconds to wait for the coordinator to answer and every process to "
                                    "join; then the program ends with one line naming the address (exit status 2)",
                            "programs": BOTH},
}


#: Flags every program spells the same way (`add_common`): one entry each, choices from their own modules.
COMMON: dict[str, dict[str, Any]] = {
    "precision": {k: v for k, v in FLAGS["precision"].items() if k != "programs"},
    "layout": {k: v for k, v in FLAGS["layout"].items() if k != "programs"},
    "seed": {"type": int, "default": 0, "help": "seed of every random draw"},
    "out": {"type": str, "default": None, "help": "output folder"},
    "debug": {k: v for k, v in FLAGS["debug"].items() if k != "programs"},
    "coordinator_address": {k: v for k, v in FLAGS["coordinator_address"].items() if k != "programs"},
    "num_processes": {k: v for k, v in FLAGS["num_processes"].items() if k != "programs"},
    "process_id": {k: v for k, v in FLAGS["process_id"].items() if k != "programs"},
    "coordinator_timeout": {k: v for k, v in FLAGS["coordinator_timeout"].items() if k != "programs"},
}
#: The multi-host group (the triple and its start-up timeout), as one group name for `add_common`.
MULTIHOST = ("coordinator_address", "num_processes", "process_id", "coordinator_timeout")


def add_common(parser: argparse.ArgumentParser, *names: str, **overrides: Any) -> None:
    """Add the shared flags `names` (keys of `COMMON`, or ``"multihost"`` for `MULTIHOST`) to a program's own
    parser, with the table's type, choices and help; ``overrides`` maps a flag name to keyword changes, e.g.
    ``add_common(p, "out", "seed", out={"required": True, "help": "..."})``."""
    expanded = [m for name in names for m in (MULTIHOST if name == "multihost" else (name,))]
    for name in expanded:
        if name not in COMMON:
            raise KeyError(f"no shared flag {name!r}; shared flags: {sorted(COMMON)}")
        kwargs = {**COMMON[name], **overrides.get(name, {})}
        if kwargs.get("required"):
            kwargs.pop("default", None)
        parser.add_argument(f"--{name}", **kwargs)


def build_parser(program: str, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with every flag of the table that `program` accepts; all defaults are None so that
    `resolve` can tell which flags were given."""
    parser = argparse.ArgumentParser(prog=f"l2l-{program}", description=description)
    for name, spec in FLAGS.items():
        if program not in spec["programs"]:
            continue
        kwargs = {k: v for k, v in spec.items() if k not in ("programs", "ignored", "default")}
        default, kwargs["default"] = spec["default"], None
        kwargs["help"] = f"{spec['help']} (default: {default})"
        parser.add_argument(f"--{name}", **kwargs)
    return parser


def defaults(program: str) -> ml_collections.ConfigDict:
    """The table's defaults for one program, as a ConfigDict."""
    return ml_collections.ConfigDict(
        {name: spec["default"] for name, spec in FLAGS.items() if program in spec["programs"]})


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Run `get_config()` of a config file (configs/<name>.py). The file is Python and runs with the user's
    rights, as an ml_collections config does: only trusted files belong here. Anything that goes wrong while
    running it (a syntax error, an exception, a `get_config()` that returns no mapping of setting names) is
    a `ConfigError` naming the file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        spec = importlib.util.spec_from_file_location(f"l2l_config_{file.stem}", file)
        if spec is None or spec.loader is None:
            raise ImportError("not a Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"--config {path}: Python syntax error at line {e.lineno}: {e.msg}; fix the file") from None
    except Exception as e:  # the file's own code failed: whatever it raised
        raise ConfigError(f"--config {path}: running it failed ({type(e).__name__}: {_first_line(e)}); fix the "
                          "file") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"--config {path}: the file defines no get_config()")
    try:
        cfg = get_config()
    except Exception as e:
        raise ConfigError(f"--config {path}: get_config() failed ({type(e).__name__}: {_first_line(e)}); fix the "
                          "file") from None
    if not isinstance(cfg, ml_collections.ConfigDict | Mapping) or not all(isinstance(k, str) for k in cfg):
        raise ConfigError(f"--config {path}: get_config() returned {type(cfg).__name__}, not an "
                          "ml_collections.ConfigDict or dict of setting names; fix the file")
    return cfg


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "no message"


def resolve(program: str, argv: Sequence[str] | None = None,
            description: str | None = None) -> ml_collections.ConfigDict:
    """Parse argv into the final config: defaults, then the config file, then the flags given."""
    args = build_parser(program, description).parse_args(argv)
    cfg = defaults(program)
    given: dict[str, Any] = {}
    if args.config:
        for key, value in load_config_file(args.config).items():
            if key not in cfg:
                raise ConfigError(f"--config {args.config}: unknown setting {key!r}")
            given[key] = value
    given.update({key: value for key, value in vars(args).items() if value is not None})
    try:
        variant = variants.get(given.get("variant", cfg.variant))
    except ValueError as e:
        raise ConfigError(f"--config {args.config}: setting 'variant': {e}; fix the file") from None
    for key, value in variant.flag_defaults:  # the variant's own opts.py defaults (docs/UPSTREAM.md §6)
        if key in cfg:
            cfg[key] = value
    for key, value in given.items():
        try:
            cfg[key] = value
        except (TypeError, ValueError) as e:  # a config file's value of the wrong type (flags are typed)
            raise ConfigError(f"--config {args.config}: setting {key!r}: {_first_line(e)}; fix the file") from None
    if program == TRAIN and cfg.get("workdir"):
        cfg.checkpoint_path = cfg.workdir
    for name, spec in FLAGS.items():
        if spec.get("ignored") and program in spec["programs"] and getattr(args, name, None) is not None:
            warnings.warn(f"--{name} is accepted for compatibility and ignored, as in upstream", stacklevel=2)
    return cfg


def run_program(program: str, body: Callable[[], int | None], argv: Sequence[str] | None = None) -> int:
    """The error boundary of a program: runs `body` and turns an input error (`l2l_jax.errors.L2LError`) into
    one line on stderr, ``l2l-<program>: <message>``, and exit status 2 (with ``--debug`` in `argv`, default
    the command line, the traceback is shown instead). Returns body's status (0 for None)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        status = body()
    except L2LError as e:
        if debug:
            raise
        print(f"l2l-{program}: {e}", file=sys.stderr)
        return 2
    return 0 if status is None else int(status)
