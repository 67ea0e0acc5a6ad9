"""`l2l-train`: upstream's training driver (UPSTREAM.md §6) as a jitted, data-parallel JAX loop.

Reads top to bottom as the recipe: flags -> data -> model and initial weights -> optimizer -> state (restored
from the newest checkpoint of the run directory if there is one) -> per epoch: jitted steps, log lines,
checkpoint, validation -> final checkpoint, model directory and training-curve plot.

* Flags: `l2l_jax.cli` (upstream's `main.py` flags plus --config/--seed/--workdir/...).
* Devices: one `Mesh` over every device of every process, batch on `data`, state replicated and donated
  (`l2l_jax.parallel`). The global batch (``--batch_size``) and every random draw are independent of the device
  and process count.
* Host syncs: only at print points (every ``--print_freq`` iterations) and at the end of an epoch; the epoch
  sums (loss, accuracy, a non-finite flag) are accumulated on the device.
* Checkpoints (`l2l_jax.run_checkpoint`): every ``--checkpoint_freq`` epochs (epoch 0 included) and after the
  last epoch; a restarted run resumes from the newest one with the same state, the same next batch and the same
  random draws, so it ends exactly as an uninterrupted run.
* Outputs in ``--checkpoint_path``: ``run.log`` and ``epoch.log`` (upstream's lines), ``metrics.jsonl`` (one JSON
  record per print point and per epoch), ``config.json``, ``tensorboard/`` (with ``--visualization``),
  ``curves.png``, ``model_final/`` (a converted-model directory for ``l2l-eval --pretrained_model``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from l2l_jax import cli, parallel
from l2l_jax import model_dir as model_dirs
from l2l_jax.data import BatchLoader, open_split
from l2l_jax.model import PreviewConfig, build_model, init_variables
from l2l_jax.recipe import Recipe
from l2l_jax.run_checkpoint import RunCheckpoints, find_run_checkpoint, read_run_params
from l2l_jax.steps import TrainState, create_train_state, make_train_step

DESCRIPTION = "Train the Listen-to-Look preview policy (upstream's main.py flags)."
DEBUG_FORMAT = "%(asctime)s %(module)s: %(lineno)d: %(levelname)s:: %(msg)s"
SUMS = ("loss", "avgpool_ce", "lstm_ce", "avgpool_correct", "lstm_correct", "count")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped without saving the bad state."""


# ------------------------------------------------------------------------------------------------ config
def feature_width(cfg: Mapping[str, Any]) -> int:
    """Feature width D of the variant: 512 for two modalities, --embedding_size for single."""
    return 512 if cfg["variant"] == "two" else int(cfg["embedding_size"])


def model_config(cfg: Mapping[str, Any]) -> PreviewConfig:
    """The model's switches from the flags."""
    return PreviewConfig(num_classes=cfg["num_classes"], episode_length=cfg["episode_length"],
                         mean_feature_as_start=cfg["mean_feature_as_start"], with_replacement=cfg["with_replacement"],
                         feature_interpolate=cfg["feature_interpolate"], subsample_factor=cfg["subsample_factor"],
                         feature_dim=feature_width(cfg))


def recipe_from_config(cfg: Mapping[str, Any], iters_per_epoch: int) -> Recipe:
    """Upstream's recipe from the flags (§6): milestones and warm-up in epochs times N_it."""
    weights = {}
    if cfg["variant"] == "two":
        weights = {"avgpool_ce_loss_weight": cfg["avgpool_ce_loss_weight"],
                   "lstm_ce_loss_weight": cfg["lstm_ce_loss_weight"]}
    return Recipe.from_epochs(
        cfg["variant"], iters_per_epoch=iters_per_epoch, milestones_epochs=cfg["milestones"],
        scheduler=cfg["scheduler"], warmup_epochs=cfg["warmup_epochs"], lr=cfg["lr"], momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"], freeze=cfg["freeze_imageAudioNet"],
        with_avgpool_ce_loss=cfg["with_avgpool_ce_loss"], with_lstm_ce_loss=cfg["with_lstm_ce_loss"],
        hard=cfg["gt_feature_eval"], episode_length=cfg["episode_length"], **weights)


def make_loader(cfg: Mapping[str, Any], source, *, train: bool) -> BatchLoader:
    """The batch loader of a split with the flags' batch size, seed, buckets and subsampling; batches in the
    chunk layout of the local devices (`l2l_jax.packing`)."""
    sub = cfg["subsample_factor"] if cfg.get("feature_subsample") else 1
    threads = max(1, min(int(cfg["decode_threads"]), 16))
    return BatchLoader(source, batch_size=cfg["batch_size"], train=train, seed=cfg["seed"], buckets=cfg["buckets"],
                       subsample=sub, num_threads=threads, prefetch=threads, chunk_groups=jax.local_device_count())


# ------------------------------------------------------------------------------------------------ weights
def _read_upstream(path: Path, variant: str) -> dict:
    from convert.core import variables_from_state_dict
    from convert.torch_io import read_state_dict

    sd, extras = read_state_dict(path)
    variables, _ = variables_from_state_dict(sd, variant, str(path.absolute()), extras)
    return variables


def read_weights(path: str, variant: str) -> dict:
    """Variables from an upstream ``.pth`` (converted on load, strictly checked), a converted-model directory
    or a training run directory (its newest checkpoint; or the run's ``checkpoints/``, or one step's directory:
    that step), whatever device count the run had."""
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"{p.absolute()}: no such file or directory")
    if p.is_file():
        return _read_upstream(p, variant)
    if model_dirs.is_model_dir(p):
        variables, _ = model_dirs.load_model_dir(p)
        return variables
    run = find_run_checkpoint(p)
    if run is not None:
        return read_run_params(*run)[0]
    raise SystemExit(f"{p.absolute()} is neither an upstream .pth, a converted-model directory nor a run directory "
                     "with checkpoints/")


def _merge(dst: dict, src: Mapping, what: str, source: str) -> None:
    for key, value in src.items():
        if key not in dst:
            raise SystemExit(f"{source}: {what} has {key!r}, which this model lacks")
        if isinstance(value, Mapping):
            _merge(dst[key], value, f"{what}/{key}", source)
        else:
            want, got = np.shape(dst[key]), np.shape(value)
            if want != got:
                raise SystemExit(f"{source}: {what}/{key} has shape {got}, the model expects {want} "
                                 "(check --num_classes / --embedding_size)")
            dst[key] = np.asarray(value, dtype=np.asarray(dst[key]).dtype)


def initial_variables(cfg: Mapping[str, Any], log: logging.Logger) -> dict:
    """Fresh variables (upstream's initial distributions, seeded), then --weights_audioImageModel (fusion net +
    classifier) and --pretrained_model (the whole preview model) over them, as upstream's main.py does."""
    variant = cfg["variant"]
    variables = jax.tree_util.tree_map(np.asarray, init_variables(model_config(cfg), variant,
                                                                  jax.random.key(cfg["seed"])))
    variables = {k: dict(v) for k, v in variables.items()}
    if cfg.get("weights_audioImageModel"):
        path = cfg["weights_audioImageModel"]
        if variant != "two":
            log.warning("--weights_audioImageModel is ignored by the single-modality variant, as upstream")
        else:
            log.debug(f"Loading model only at: {path}")
            src = read_weights(path, "imageaudionet") if Path(path).is_file() else read_weights(path, variant)
            sub = {k: src["params"][k] for k in ("net_imageAudio", "net_classifier")}
            _merge(variables["params"], sub, "params", path)
    if cfg.get("pretrained_model"):
        path = cfg["pretrained_model"]
        log.debug(f"Loading model only at: {path}")
        src = read_weights(path, variant)
        _merge(variables["params"], src["params"], "params", path)
        _merge(variables["batch_stats"], src.get("batch_stats", {}), "batch_stats", path)
    return variables


# ------------------------------------------------------------------------------------------------ logs
class _UpstreamFormatter(logging.Formatter):
    """DEBUG lines with upstream's prefix, INFO lines bare (UPSTREAM.md §6 "Logs")."""

    def __init__(self):
        super().__init__(DEBUG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO:
            return record.getMessage()
        return super().format(record)


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


def _logger(name: str, path: Path | None, fmt: logging.Formatter, echo: bool) -> logging.Logger:
    log = logging.getLogger(f"l2l_jax.train.{name}.{id(fmt)}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    if path is not None:
        fh = logging.FileHandler(path)
        fh.setFormatter(fmt)
        log.addHandler(fh)
    if echo:
        sh = _TqdmHandler()
        sh.setFormatter(fmt)
        log.addHandler(sh)
    return log


def _close(log: logging.Logger) -> None:
    for h in list(log.handlers):
        h.close()
        log.removeHandler(h)


class _Meter:
    """Upstream's AverageMeter: last value and sample-weighted mean."""

    def __init__(self):
        self.val, self.sum, self.n = 0.0, 0.0, 0.0

    def update(self, val: float, n: float = 1.0) -> None:
        self.val, self.sum, self.n = val, self.sum + val * n, self.n + n

    @property
    def avg(self) -> float:
        return self.sum / self.n if self.n else 0.0


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rewrite_metrics(path: Path, keep_before_epoch: int) -> None:
    """On resume: drop the records of epochs that will be trained again (written before an interruption)."""
    records = [r for r in _read_metrics(path) if r.get("epoch", -1) < keep_before_epoch]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def plot_curves(metrics_path: Path, out: Path) -> Path | None:
    """A PNG of the training loss, the training accuracy and the validation accuracy/mAP per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r for r in _read_metrics(metrics_path) if r.get("kind") == "epoch"]
    if not epochs:
        return None
    x = [r["epoch"] for r in epochs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(x, [r["train/loss"] for r in epochs], "o-", label="loss")
    axes[0].plot(x, [r["train/avgpool_ce"] for r in epochs], ".--", label="avgpool CE")
    axes[0].plot(x, [r["train/lstm_ce"] for r in epochs], ".--", label="LSTM CE")
    axes[0].set_title("training loss")
    axes[1].plot(x, [r["train/avgpool_acc"] for r in epochs], "o-", label="avgpool")
    axes[1].plot(x, [r["train/lstm_acc"] for r in epochs], "o-", label="LSTM")
    axes[1].set_title("training accuracy")
    for key, label in (("val/avgpool_acc", "avgpool acc"), ("val/lstm_acc", "LSTM acc"),
                       ("val/avgpool_map", "avgpool mAP"), ("val/lstm_map", "LSTM mAP")):
        pts = [(r["epoch"], r[key]) for r in epochs if key in r]
        if pts:
            axes[2].plot(*zip(*pts, strict=True), "o-", label=label)
    axes[2].set_title("validation")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------------------------ steps
def make_epoch_step(train_step):
    """Wrap the train step so that the epoch's sums and the non-finite flag accumulate on the device."""

    def step(state: TrainState, acc: dict, batch: dict):
        k = state.step
        state, m = train_step(state, batch)
        n = m["count"]
        finite = jnp.isfinite(m["loss"])
        new = {key: acc[key] + (m[key] * n if key in ("loss", "avgpool_ce", "lstm_ce") else m[key])
               for key in SUMS}
        new["first_bad"] = jnp.where((acc["first_bad"] < 0) & ~finite, k, acc["first_bad"])
        return state, new, m

    return step


def zero_sums() -> dict:
    return {**{k: jnp.zeros((), jnp.float32) for k in SUMS}, "first_bad": -jnp.ones((), jnp.int32)}


# ------------------------------------------------------------------------------------------------ validation
def make_val_loader(cfg: Mapping[str, Any], source) -> BatchLoader:
    """The evaluator's validation loader (this process's rows): grouped by length where per-video results do
    not depend on the batch (`evaluate.sort_by_length_ok`), else in upstream's order."""
    from l2l_jax.evaluate import make_eval_loader, sort_by_length_ok

    sub = cfg["subsample_factor"] if cfg.get("feature_subsample") else 1
    return make_eval_loader(source, batch_size=cfg["batch_size"], seed=cfg["seed"], buckets=cfg["buckets"],
                            sort_by_length=sort_by_length_ok(model_config(cfg), cfg["variant"]), subsample=sub,
                            num_threads=max(1, min(int(cfg["decode_threads"]), 16)))


def validate(cfg: Mapping[str, Any], model, variables, loader: BatchLoader, mesh) -> dict[str, float]:
    """Upstream's per-epoch validation (avgpool/LSTM accuracy and mAP) through the evaluator. The start clips
    depend on --seed and the video only, so every epoch is measured on the same draws."""
    from l2l_jax.evaluate import evaluate

    res = evaluate(model, parallel.to_host(variables), loader, hard=cfg["gt_feature_eval"], seed=cfg["seed"],
                   mesh=mesh, progress=parallel.is_main_process(), variant=cfg["variant"],
                   cfg=model_config(cfg), with_baselines=False, desc="validation")
    out = {"avgpool_acc": res.avgpool_acc, "lstm_acc": res.lstm_acc, "avgpool_map": res.avgpool_map,
           "lstm_map": res.lstm_map, "num_videos": res.num_videos, "videos_per_s": res.videos_per_second}
    if res.gt_map is not None:
        out["gt_map"] = res.gt_map
    return out


# ------------------------------------------------------------------------------------------------ driver
def train(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary (epochs trained, final step, last validation)."""
    parallel.init_distributed(cfg)
    main_proc = parallel.is_main_process()
    run_dir = Path(cfg.checkpoint_path).absolute()
    if main_proc:
        run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.train_dataset_file:
        raise SystemExit("--train_dataset_file is required (an upstream train.pkl or a packed split)")
    if cfg.epochs <= cfg.start_epoch:
        raise SystemExit(f"--epochs {cfg.epochs} must be larger than --start_epoch {cfg.start_epoch}")
    if cfg.checkpoint_freq < 1:
        raise SystemExit("--checkpoint_freq must be >= 1")
    log = _logger("run", run_dir / "run.log" if main_proc else None, _UpstreamFormatter(), main_proc)
    elog = _logger("epoch", run_dir / "epoch.log" if main_proc else None, logging.Formatter("%(message)s"),
                   main_proc)
    tb = None
    try:
        log.debug(f"Namespace: {json.dumps(cfg.to_dict(), sort_keys=True)}")
        if main_proc:
            (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, sort_keys=True))

        # ---- data
        variant, width = cfg.variant, feature_width(cfg)
        t0 = time.time()
        open_kw = dict(variant=variant, num_classes=cfg.num_classes, feature_root=cfg.feature_root, width=width,
                       skip_bad_videos=cfg.skip_bad_videos, progress=main_proc)
        train_src = open_split(cfg.train_dataset_file, **open_kw)
        val_src = open_split(cfg.test_dataset_file, **open_kw) if cfg.test_dataset_file else None
        log.debug(f"Time to load paths: {time.time() - t0:.3f}")
        log.debug(f"Number of videos: {len(train_src)}")
        if val_src is not None:
            log.debug(f"Number of videos: {len(val_src)}")
        if len(train_src) % cfg.batch_size == 1:
            raise SystemExit(f"{cfg.train_dataset_file}: {len(train_src)} videos leave a last batch of 1 video at "
                             f"--batch_size {cfg.batch_size}; BatchNorm cannot train on one row (upstream crashes, "
                             "quirk 17): change --batch_size")
        loader = make_loader(cfg, train_src, train=True)
        val_loader = make_val_loader(cfg, val_src) if val_src is not None else None
        n_it = loader.batches_per_epoch

        # ---- model, recipe, state
        mesh = parallel.make_mesh()
        parallel.local_batch_size(cfg.batch_size, mesh)  # the batch must split over the devices
        model = build_model(model_config(cfg), variant)
        recipe = recipe_from_config(cfg, n_it)
        tx = recipe.optimizer()
        ckpts = RunCheckpoints(run_dir, keep=cfg.keep_checkpoints)
        state = create_train_state(initial_variables(cfg, log), tx, cfg.seed)
        state = parallel.replicate(state, mesh)
        first_epoch, data_state = cfg.start_epoch, None
        if ckpts.latest_step() is not None:
            log.debug(f"Loading last checkpoint: {ckpts.directory / str(ckpts.latest_step())}")
            state, progress = ckpts.restore(state)
            first_epoch, data_state = int(progress["next_epoch"]), progress["data"]
            log.debug(f"Resuming after epoch {progress['epoch']} at step {int(parallel.to_host(state.step))}")
            if main_proc:
                _rewrite_metrics(run_dir / "metrics.jsonl", first_epoch)
        log.debug(f"Model: {type(model).__name__} ({variant}), {jax.device_count()} device(s) "
                  f"({jax.devices()[0].platform}), {jax.process_count()} process(es)")

        rep = parallel.replicated(mesh)
        epoch_step = jax.jit(make_epoch_step(make_train_step(model, recipe)), donate_argnums=(0, 1),
                             out_shardings=(rep, rep, rep), compiler_options=parallel.compiler_options())
        it = loader.iterator(num_epochs=cfg.epochs - cfg.start_epoch, start_epoch=cfg.start_epoch)
        if data_state is not None:
            it.set_state(data_state)
        if cfg.visualization and main_proc:
            from tensorboardX import SummaryWriter

            tb = SummaryWriter(str(run_dir / "tensorboard"))
        metrics_file = open(run_dir / "metrics.jsonl", "a") if main_proc else None  # noqa: SIM115
        if main_proc and not (run_dir / "epoch.log").stat().st_size:
            elog.info("epoch,loss,acc,lr")

        log.debug("Entering the training loop")
        last_val: dict[str, float] = {}
        for epoch in range(first_epoch, cfg.epochs):
            sums = parallel.replicate(zero_sums(), mesh)
            bt, dt = _Meter(), _Meter()
            meters = {k: _Meter() for k in ("avgpool_ce", "lstm_ce", "loss", "avgpool_acc", "lstm_acc")}
            seen_sums = {k: 0.0 for k in SUMS}
            bar = tqdm(total=n_it, desc=f"epoch {epoch}", unit="batch", disable=not main_proc, leave=False,
                       dynamic_ncols=True)
            t_epoch = end = time.perf_counter()
            videos = 0.0
            for i in range(1, n_it + 1):
                batch = next(it)
                videos += float(np.sum(batch["valid"])) * jax.process_count()
                batch = parallel.shard_batch(batch, mesh)
                dt.update(time.perf_counter() - end)
                state, sums, m = epoch_step(state, sums, batch)
                bar.update(1)
                now = time.perf_counter()
                bt.update(now - end)
                end = now
                if i % cfg.print_freq == 0 or i == n_it:
                    host_sums, host_m = parallel.to_host((sums, m))  # the print point: one sync
                    _check_finite(host_sums, epoch, n_it, ckpts, log)
                    n = float(host_m["count"])
                    # the meters weight by sample count, with the sums since the last print point as one update
                    delta = {k: float(host_sums[k]) - seen_sums[k] for k in SUMS}
                    seen_sums = {k: float(host_sums[k]) for k in SUMS}
                    dn = max(delta["count"], 1.0)
                    meters["avgpool_ce"].update(delta["avgpool_ce"] / dn, dn)
                    meters["lstm_ce"].update(delta["lstm_ce"] / dn, dn)
                    meters["loss"].update(delta["loss"] / dn, dn)
                    meters["avgpool_acc"].update(delta["avgpool_correct"] / dn, dn)
                    meters["lstm_acc"].update(delta["lstm_correct"] / dn, dn)
                    k_done = epoch_offset(epoch, cfg.start_epoch, n_it) + i
                    lr0 = recipe.group_lrs(k_done)[0]
                    rate = videos / max(now - t_epoch, 1e-9)
                    bar.set_postfix(loss=f"{float(host_m['loss']):.4f}", videos_s=f"{rate:.0f}")
                    if i % cfg.print_freq == 0:
                        log.info(_upstream_line(epoch, i, n_it, lr0, bt, dt, meters, host_m, n))
                    if metrics_file is not None:
                        rec = {"kind": "train", "epoch": epoch, "iteration": i, "step": k_done, "lr": lr0,
                               "loss": float(host_m["loss"]), "avgpool_ce": float(host_m["avgpool_ce"]),
                               "lstm_ce": float(host_m["lstm_ce"]), "videos_per_s": rate}
                        metrics_file.write(json.dumps(rec) + "\n")
                        metrics_file.flush()
                    if tb is not None:
                        for key in ("loss", "avgpool_ce", "lstm_ce"):
                            tb.add_scalar(f"train/{key}", float(host_m[key]), k_done)
                        tb.add_scalar("train/lr", lr0, k_done)
                        tb.add_scalar("train/videos_per_s", rate, k_done)
            bar.close()
            # ---- end of epoch: checkpoint (before validation, as upstream), epoch.log, validation
            host_sums = parallel.to_host(sums)
            _check_finite(host_sums, epoch, n_it, ckpts, log)
            count = max(float(host_sums["count"]), 1.0)
            k_done = epoch_offset(epoch + 1, cfg.start_epoch, n_it)
            lr0 = recipe.group_lrs(k_done)[0]
            epoch_loss = float(host_sums["loss"]) / count
            elapsed = time.perf_counter() - t_epoch
            if epoch % cfg.checkpoint_freq == 0 or epoch == cfg.epochs - 1:
                log.info(f"Saving checkpoint to {ckpts.directory / str(k_done)}")
                ckpts.save(k_done, state, {"data": it.get_state(), "next_epoch": epoch + 1, "epoch": epoch,
                                           "final": epoch == cfg.epochs - 1})
            elog.info(f"{epoch}, {epoch_loss}, {lr0}")
            record = {"kind": "epoch", "epoch": epoch, "step": k_done, "lr": lr0, "train/loss": epoch_loss,
                      "train/avgpool_ce": float(host_sums["avgpool_ce"]) / count,
                      "train/lstm_ce": float(host_sums["lstm_ce"]) / count,
                      "train/avgpool_acc": float(host_sums["avgpool_correct"]) / count,
                      "train/lstm_acc": float(host_sums["lstm_correct"]) / count,
                      "train/videos_per_s": float(host_sums["count"]) / elapsed, "train/seconds": elapsed}
            if val_loader is not None:
                last_val = validate(cfg, model, state.variables, val_loader, mesh)
                for line in _validation_lines(variant, epoch, last_val):
                    elog.info(line)
                record.update({f"val/{k}": float(v) for k, v in last_val.items()})
            if metrics_file is not None:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            if tb is not None:
                for key, value in record.items():
                    if "/" in key:
                        tb.add_scalar(key, value, epoch)
                tb.flush()
        if metrics_file is not None:
            metrics_file.close()

        # ---- the end: a converted-model directory of the final weights and the curves
        summary = {"epochs": cfg.epochs, "step": int(parallel.to_host(state.step)), "validation": last_val,
                   "run_dir": str(run_dir)}
        variables = parallel.to_host(state.variables)  # every process (a collective if not replicated)
        if main_proc:  # process 0 alone writes the model directory (save_model_dir is a one-process writer)
            meta = {"variant": variant, "num_classes": cfg.num_classes, "feature_dim": width,
                    "source": str(run_dir), "epoch": cfg.epochs - 1}
            model_dirs.save_model_dir(run_dir / "model_final", variables, meta, overwrite=True)
            png = plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
            if png is not None:
                log.debug(f"Training curves: {png}")
        ckpts.close()
        return summary
    finally:
        if tb is not None:
            tb.close()
        _close(log)
        _close(elog)


def epoch_offset(epoch: int, start_epoch: int, n_it: int) -> int:
    """Optimizer steps taken before `epoch` began."""
    return (epoch - start_epoch) * n_it


def _check_finite(host_sums: Mapping[str, Any], epoch: int, n_it: int, ckpts: RunCheckpoints,
                  log: logging.Logger) -> None:
    bad = int(host_sums["first_bad"])
    if bad < 0 and math.isfinite(float(host_sums["loss"])):
        return
    last = ckpts.latest_step()
    where = f"the last good checkpoint is {ckpts.directory / str(last)}" if last is not None else "no checkpoint yet"
    msg = (f"non-finite training loss at step {bad} (epoch {epoch}, {n_it} iterations per epoch): stopping without "
           f"saving; {where}. Lower --lr or check the input features.")
    log.error(msg)
    raise NonFiniteLossError(msg)


def _upstream_line(epoch: int, i: int, n_it: int, lr: float, bt: _Meter, dt: _Meter, meters: dict,
                   m: Mapping[str, Any], n: float) -> str:
    n = max(n, 1.0)
    return (f"Epoch: [{epoch}][{i}/{n_it}]\tLR: {lr}\t"
            f"Time {bt.val:.3f} ({bt.avg:.3f})\tData {dt.val:.3f} ({dt.avg:.3f})\t"
            f"Avgpool CE Loss {float(m['avgpool_ce']):.4f} ({meters['avgpool_ce'].avg:.4f})\t"
            f"LSTM CE Loss {float(m['lstm_ce']):.4f} ({meters['lstm_ce'].avg:.4f})\t"
            f"Loss {float(m['loss']):.4f} ({meters['loss'].avg:.4f})\t"
            f"Avgpool Acc {float(m['avgpool_correct']) / n:.3f} ({meters['avgpool_acc'].avg:.3f})\t"
            f"LSTM Acc {float(m['lstm_correct']) / n:.3f} ({meters['lstm_acc'].avg:.3f})\n")


def _validation_lines(variant: str, epoch: int, r: Mapping[str, float]) -> list[str]:
    """validate()'s lines in epoch.log (UPSTREAM.md §6 "Logs"), per variant."""
    if variant == "single":
        lines = [f"Final accuracy from avgpooling at epoch {epoch}: {r['avgpool_acc']}",
                 f"Final accuracy from lstm  at epoch {epoch}: {r['lstm_acc']}",
                 f"mAP from avgpooling at epoch {epoch}: {r['avgpool_map']}",
                 f"mAP from lstm at epoch {epoch}: {r['lstm_map']}"]
        if "gt_map" in r:  # the evaluator gives the gt mAP only (quirk 19)
            lines.append(f"mAP from gt predictions at epoch {epoch}: {r['gt_map']}\n")
        return lines
    return [f"Final accuracy from avgpooling at epoch {epoch}: {r['avgpool_acc']}",
            f"Final accuracy from lstm final prediction at epoch {epoch}: {r['lstm_acc']}",
            f"mAP from avgpooling at epoch {epoch}: {r['avgpool_map']}",
            f"mAP from lstm final prediction at epoch {epoch}: {r['lstm_map']}\n"]


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: parse the flags (upstream's plus ours) and train."""
    cfg = cli.resolve(cli.TRAIN, argv, DESCRIPTION)
    try:
        train(cfg)
    except NonFiniteLossError as e:
        raise SystemExit(f"l2l-train: {e}") from None


if __name__ == "__main__":
    main()
