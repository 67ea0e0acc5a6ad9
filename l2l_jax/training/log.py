"""A training run's outputs, written by process 0 into the run directory (``--checkpoint_path``):

* ``run.log``: upstream's log lines (docs/UPSTREAM.md §6 "Logs"): DEBUG lines with upstream's prefix, INFO
  lines bare, mirrored to stdout; at every print point upstream's ``Epoch: [e][i/N_it]`` line with its
  AverageMeter arithmetic (`_Meter`);
* ``epoch.log``: the header ``epoch,loss,acc,lr``, one ``epoch, loss, lr`` line per epoch and the
  validation lines (`l2l_jax.training.validation.validation_lines`);
* ``metrics.jsonl``: one JSON record per print point (``"kind": "train"``) and per epoch (``"kind":
  "epoch"``); on resume the records of epochs that will be trained again are dropped first;
* ``config.json`` (the resolved flags), ``tensorboard/`` (with ``--visualization``) and ``curves.png``
  (`l2l_jax.evaluation.plots.training_curves`).

`RunLog` owns all of them; the other processes get a `RunLog` that writes nothing. The numbers it logs come
from the epoch sums that the train step accumulates on the device (`SUMS`), fetched at print points only.

A run directory on a bucket (``gs://bucket/run``) takes no appends: run.log and epoch.log keep their text in
memory (`_ObjectHandler`) and write their whole object again at print points, at the end of each epoch, after
a warning and at the end (`RunLog.flush`); metrics.jsonl is written again with every record; TensorBoard
writes into a local temporary folder whose files are copied to ``tensorboard/`` at the end of each epoch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm

from l2l_jax import storage
from l2l_jax.outputs import atomic_write_text
from l2l_jax.runkit.metrics import MetricsFile, rewrite_object

#: upstream's format of DEBUG lines (docs/UPSTREAM.md §6 "Logs"); INFO lines are bare.
DEBUG_FORMAT = "%(asctime)s %(module)s: %(lineno)d: %(levelname)s:: %(msg)s"
#: The epoch's running sums, accumulated on the device by the train loop (losses weighted by row count).
SUMS = ("loss", "avgpool_ce", "lstm_ce", "avgpool_correct", "lstm_correct", "count")
#: The meters of upstream's print line, in its order.
METERS = ("avgpool_ce", "lstm_ce", "loss", "avgpool_acc", "lstm_acc")
#: upstream's epoch line in epoch.log: ``<epoch>, <mean loss>, <lr>``
_EPOCH_LINE = re.compile(r"^(\d+), \S+, \S+$")


#: the resolved flags of a run, in its run directory (l2l-predict reads them back)
CONFIG_FILE = "config.json"


# ------------------------------------------------------------------------------------------------ loggers
class _UpstreamFormatter(logging.Formatter):
    """DEBUG lines with upstream's prefix, INFO lines bare (docs/UPSTREAM.md §6 "Logs")."""

    def __init__(self):
        super().__init__(DEBUG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO:
            return record.getMessage()
        return super().format(record)


class _TqdmHandler(logging.Handler):
    """Mirrors log lines to stdout without breaking the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


class _ObjectHandler(logging.Handler):
    """A log file on a bucket: the lines are kept (after the object's text, as appending would) and the whole
    object is written again by `flush` when lines were added since the last write."""

    def __init__(self, path: storage.AnyPath):
        super().__init__()
        self.path = path
        self.text = path.read_text() if path.exists() else ""
        self._dirty = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # noqa: BLE001 (logging's own contract: a bad record is reported, not raised)
            self.handleError(record)
            return
        self.acquire()
        try:
            self.text += line
            self._dirty = True
        finally:
            self.release()

    def reset(self, text: str) -> None:
        """The object was replaced with `text`: go on after it."""
        self.text, self._dirty = text, False

    def flush(self) -> None:
        self.acquire()
        try:
            if self._dirty:
                rewrite_object(self.path, self.text)
                self._dirty = False
        finally:
            self.release()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            super().close()


_FILE_HANDLERS = (logging.FileHandler, _ObjectHandler)


def _logger(name: str, path: storage.AnyPath | None, fmt: logging.Formatter, echo: bool) -> logging.Logger:
    """A private logger writing to `path` (if any; a URL: `_ObjectHandler`) and, with `echo`, to stdout."""
    log = logging.getLogger(f"l2l_jax.training.{name}.{id(fmt)}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    if path is not None:
        fh = _ObjectHandler(path) if storage.is_url(path) else logging.FileHandler(path)
        fh.setFormatter(fmt)
        log.addHandler(fh)
    if echo:
        sh = _TqdmHandler()
        sh.setFormatter(fmt)
        log.addHandler(sh)
    return log


def _close(log: logging.Logger) -> None:
    """Close every handler (each one, even if one fails: a bucket that does not answer), then raise the first
    failure."""
    error = None
    for h in list(log.handlers):
        try:
            h.close()
        except Exception as e:  # noqa: BLE001
            error = error or e
        log.removeHandler(h)
    if error is not None:
        raise error


# ------------------------------------------------------------------------------------------------ meters
class _Meter:
    """Upstream's AverageMeter: last value and sample-weighted mean."""

    def __init__(self):
        self.val, self.sum, self.n = 0.0, 0.0, 0.0

    def update(self, val: float, n: float = 1.0) -> None:
        self.val, self.sum, self.n = val, self.sum + val * n, self.n + n

    @property
    def avg(self) -> float:
        return self.sum / self.n if self.n else 0.0


class _Epoch:
    """One epoch's clocks, meters and progress bar. Upstream's Data time runs from the end of the previous
    step to the batch being on the device, its (batch) Time from the end of the previous step to the end of
    this one; the step's end is when the jitted call returns (dispatch, not completion)."""

    def __init__(self, epoch: int, n_it: int, show: bool):
        self.batch_time, self.data_time = _Meter(), _Meter()
        self.meters = {k: _Meter() for k in METERS}
        self.seen = dict.fromkeys(SUMS, 0.0)  # the sums at the previous print point
        self.videos = 0.0
        self.bar = tqdm(total=n_it, desc=f"epoch {epoch}", unit="batch", disable=not show, leave=False,
                        dynamic_ncols=True)
        self.start = self.end = time.perf_counter()

    def update_meters(self, host_sums: Mapping[str, Any]) -> None:
        """Upstream's meters weight by sample count; the batches since the last print point count as one
        update (their sums, divided by their rows)."""
        delta = {k: float(host_sums[k]) - self.seen[k] for k in SUMS}
        self.seen = {k: float(host_sums[k]) for k in SUMS}
        dn = max(delta["count"], 1.0)
        self.meters["avgpool_ce"].update(delta["avgpool_ce"] / dn, dn)
        self.meters["lstm_ce"].update(delta["lstm_ce"] / dn, dn)
        self.meters["loss"].update(delta["loss"] / dn, dn)
        self.meters["avgpool_acc"].update(delta["avgpool_correct"] / dn, dn)
        self.meters["lstm_acc"].update(delta["lstm_correct"] / dn, dn)

    def videos_per_s(self) -> float:
        return self.videos / max(self.end - self.start, 1e-9)


def upstream_line(epoch: int, i: int, n_it: int, lr: float, e: _Epoch, m: Mapping[str, Any]) -> str:
    """Upstream's print line (docs/UPSTREAM.md §6 "Logs"): this batch's values (`m`, its metrics) and the
    meters' averages in parentheses."""
    n = max(float(m["count"]), 1.0)
    bt, dt, meters = e.batch_time, e.data_time, e.meters
    return (f"Epoch: [{epoch}][{i}/{n_it}]\tLR: {lr}\t"
            f"Time {bt.val:.3f} ({bt.avg:.3f})\tData {dt.val:.3f} ({dt.avg:.3f})\t"
            f"Avgpool CE Loss {float(m['avgpool_ce']):.4f} ({meters['avgpool_ce'].avg:.4f})\t"
            f"LSTM CE Loss {float(m['lstm_ce']):.4f} ({meters['lstm_ce'].avg:.4f})\t"
            f"Loss {float(m['loss']):.4f} ({meters['loss'].avg:.4f})\t"
            f"Avgpool Acc {float(m['avgpool_correct']) / n:.3f} ({meters['avgpool_acc'].avg:.3f})\t"
            f"LSTM Acc {float(m['lstm_correct']) / n:.3f} ({meters['lstm_acc'].avg:.3f})\n")


def epoch_record(epoch: int, step: int, lr: float, host_sums: Mapping[str, Any], seconds: float) -> dict:
    """The epoch's ``metrics.jsonl`` record before validation: means of the epoch sums per row."""
    count = max(float(host_sums["count"]), 1.0)
    return {"kind": "epoch", "epoch": epoch, "step": step, "lr": lr, "train/loss": float(host_sums["loss"]) / count,
            "train/avgpool_ce": float(host_sums["avgpool_ce"]) / count,
            "train/lstm_ce": float(host_sums["lstm_ce"]) / count,
            "train/avgpool_acc": float(host_sums["avgpool_correct"]) / count,
            "train/lstm_acc": float(host_sums["lstm_correct"]) / count,
            "train/videos_per_s": float(host_sums["count"]) / seconds, "train/seconds": seconds}


# ------------------------------------------------------------------------------------------------ metrics.jsonl
def _epoch_complete(records: list[dict], epoch: int, validated: bool) -> bool:
    """Whether metrics.jsonl holds `epoch`'s record (with its validation, if the run validates). The record is
    the last thing written for an epoch, so its epoch.log lines are then complete too."""
    return any(r.get("kind") == "epoch" and r.get("epoch") == epoch
               and (not validated or any(k.startswith("val/") for k in r)) for r in records)


def _epoch_log_blocks(text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """epoch.log as (header lines, [(epoch, its lines: the epoch line, the validation lines after it)])."""
    head: list[str] = []
    blocks: list[tuple[int, list[str]]] = []
    for line in text.splitlines(keepends=True):
        m = _EPOCH_LINE.match(line)
        if m:
            blocks.append((int(m.group(1)), [line]))
        elif blocks:
            blocks[-1][1].append(line)
        else:
            head.append(line)
    return head, blocks


# ------------------------------------------------------------------------------------------------ the run's outputs
class RunLog:
    """Every output of a training run but its checkpoints and final model (see the module docstring).

    ``log`` is the ``run.log`` logger (upstream's DEBUG/INFO lines): ``run.log.debug(...)``. On processes
    other than 0 nothing is written and nothing is echoed."""

    def __init__(self, run_dir: str | os.PathLike, *, main_process: bool):
        self.run_dir = storage.absolute(run_dir)
        self.url = storage.is_url(self.run_dir)
        self.main = main_process
        if self.main and not self.url:  # a bucket has no folders to create
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = MetricsFile(self.run_dir)  # opened by `open_outputs` (process 0)
        self.metrics_path = self._metrics.path
        self.log = _logger("run", self.run_dir / "run.log" if self.main else None, _UpstreamFormatter(), self.main)
        self.epochs = _logger("epoch", self.run_dir / "epoch.log" if self.main else None,
                              logging.Formatter("%(message)s"), self.main)
        self._tb = None  # the TensorBoard writer (process 0, with --visualization)
        self._tb_local: str | None = None  # a bucket's run: the writer's local folder, copied per epoch
        self._epoch: _Epoch | None = None

    # ---- start of the run
    def write_config(self, cfg: Any) -> None:
        """upstream's Namespace line in run.log; the resolved flags as config.json."""
        self.log.debug(f"Namespace: {json.dumps(cfg.to_dict(), sort_keys=True)}")
        if self.main:
            text = json.dumps(cfg.to_dict(), indent=1, sort_keys=True)
            if self.url:
                rewrite_object(self.run_dir / CONFIG_FILE, text)
            else:
                atomic_write_text(self.run_dir / CONFIG_FILE, text)
        self.flush()

    def flush(self) -> None:
        """run.log and epoch.log on a bucket: write their objects with the lines added since (locally every line
        is written as it comes: nothing to do)."""
        for log in (self.log, self.epochs):
            for h in log.handlers:
                if isinstance(h, _ObjectHandler):
                    h.flush()

    def resumed(self, next_epoch: int, last_epoch: int | None = None, validated: bool = False) -> bool:
        """A resumed run trains `next_epoch` and later again: drop their records from metrics.jsonl and their
        lines from epoch.log (written before an interruption). `last_epoch`, the epoch of the restored
        checkpoint: if its record is missing or lacks its validation (`validated`: the run validates), a kill
        came between its checkpoint and its record; its partial lines and record are dropped too and True is
        returned: the caller writes them again (`epoch_end`). Process 0 decides; others return False."""
        if not self.main:
            return False
        records = self._metrics.records()
        redo = last_epoch is not None and not _epoch_complete(records, last_epoch, validated)
        keep_epoch = last_epoch if redo else next_epoch

        def kept(r: dict) -> bool:
            e = r.get("epoch", -1)
            return e < keep_epoch or (redo and e == last_epoch and r.get("kind") != "epoch")

        self._metrics.keep(kept)
        epoch_log = self.run_dir / "epoch.log"
        if epoch_log.exists():
            head, blocks = _epoch_log_blocks(epoch_log.read_text())
            text = "".join(head) + "".join("".join(lines) for e, lines in blocks if e < keep_epoch)
            if text != epoch_log.read_text():
                if self.url:
                    rewrite_object(epoch_log, text)
                else:
                    atomic_write_text(epoch_log, text)
                self._reopen_epoch_log(text)
        return redo

    def _reopen_epoch_log(self, text: str) -> None:
        """epoch.log was replaced (with `text`): its handler must write into the new file."""
        for h in self.epochs.handlers:
            if isinstance(h, _ObjectHandler):
                h.reset(text)
            elif isinstance(h, logging.FileHandler):
                h.acquire()
                try:
                    if h.stream is not None:
                        h.stream.close()
                    h.stream = h._open()
                finally:
                    h.release()

    def warn(self, message: str) -> None:
        """One warning line in run.log and on stderr (not on stdout); process 0 only."""
        if not self.main:
            return
        record = self.log.makeRecord(self.log.name, logging.WARNING, __file__, 0, message, None, None)
        for h in self.log.handlers:
            if isinstance(h, _FILE_HANDLERS):
                h.handle(record)
        tqdm.write(f"l2l-train: warning: {message}", file=sys.stderr)
        self.flush()

    def open_outputs(self, *, visualization: bool) -> None:
        """Open metrics.jsonl (appending), the TensorBoard writer, and start epoch.log with its header."""
        if not self.main:
            return
        if visualization:
            from tensorboardX import SummaryWriter

            if self.url:  # event files are appended to: written locally, copied to the bucket per epoch
                self._tb_local = tempfile.mkdtemp(prefix="l2l-tensorboard-")
            self._tb = SummaryWriter(self._tb_local or str(self.run_dir / "tensorboard"))
        self._metrics.open()
        if self.url:
            empty = not next((h.text for h in self.epochs.handlers if isinstance(h, _ObjectHandler)), "")
        else:
            empty = not (self.run_dir / "epoch.log").stat().st_size
        if empty:
            self.epochs.info("epoch,loss,acc,lr")
            self.flush()

    # ---- during an epoch
    def epoch_start(self, epoch: int, n_it: int) -> None:
        """New meters, clocks and progress bar for `epoch`."""
        self._epoch = _Epoch(epoch, n_it, self.main)

    def batch_on_device(self) -> None:
        """The batch is loaded and on the device (upstream's Data time)."""
        e = self._epoch
        e.data_time.update(time.perf_counter() - e.end)

    def batch_stepped(self, videos: float) -> None:
        """The train step of a batch of `videos` real rows was dispatched (upstream's batch Time)."""
        e = self._epoch
        e.bar.update(1)
        now = time.perf_counter()
        e.batch_time.update(now - e.end)
        e.end = now
        e.videos += videos

    def print_point(self, epoch: int, i: int, n_it: int, step: int, lr: float, host_sums: Mapping[str, Any],
                    host_m: Mapping[str, Any], *, upstream: bool) -> None:
        """At a print point (after batch `i`, `step` optimizer steps done): update the meters from the epoch
        sums, write upstream's line to run.log (with `upstream`: every --print_freq batches), a ``train``
        record to metrics.jsonl and the TensorBoard scalars. `host_m` are the last batch's metrics."""
        e = self._epoch
        e.update_meters(host_sums)
        rate = e.videos_per_s()
        e.bar.set_postfix(loss=f"{float(host_m['loss']):.4f}", videos_s=f"{rate:.0f}")
        if upstream:
            self.log.info(upstream_line(epoch, i, n_it, lr, e, host_m))
        if self._metrics.is_open:
            self._metrics.write({"kind": "train", "epoch": epoch, "iteration": i, "step": step, "lr": lr,
                                "loss": float(host_m["loss"]), "avgpool_ce": float(host_m["avgpool_ce"]),
                                "lstm_ce": float(host_m["lstm_ce"]), "videos_per_s": rate})
        if self._tb is not None:
            for key in ("loss", "avgpool_ce", "lstm_ce"):
                self._tb.add_scalar(f"train/{key}", float(host_m[key]), step)
            self._tb.add_scalar("train/lr", lr, step)
            self._tb.add_scalar("train/videos_per_s", rate, step)
        self.flush()

    def batches_done(self) -> None:
        """The epoch's batches are all stepped: close the progress bar."""
        self._epoch.bar.close()

    def epoch_seconds(self) -> float:
        """Seconds since the epoch started."""
        return time.perf_counter() - self._epoch.start

    # ---- end of an epoch
    def epoch_end(self, epoch: int, step: int, lr: float, host_sums: Mapping[str, Any], seconds: float,
                  validation: Mapping[str, float] | None = None, validation_lines: list[str] = ()) -> None:
        """Upstream's epoch line (mean loss, group-0 lr after the epoch) and the validation lines in
        epoch.log; the ``epoch`` record in metrics.jsonl; the epoch's scalars in TensorBoard."""
        record = epoch_record(epoch, step, lr, host_sums, seconds)
        self.epochs.info(f"{epoch}, {record['train/loss']}, {lr}")
        for line in validation_lines:
            self.epochs.info(line)
        if validation is not None:
            record.update({f"val/{k}": float(v) for k, v in validation.items()})
        if self._metrics.is_open:
            self._metrics.write(record)
        if self._tb is not None:
            for key, value in record.items():
                if "/" in key:
                    self._tb.add_scalar(key, value, epoch)
            self._tb.flush()
            self._copy_tensorboard()
        self.flush()

    def _copy_tensorboard(self) -> None:
        """A bucket's run: the local event files, each written whole to ``tensorboard/`` (they only grow)."""
        if self._tb_local is None:
            return
        for f in sorted(os.listdir(self._tb_local)):
            local = os.path.join(self._tb_local, f)
            if os.path.isfile(local):
                with open(local, "rb") as fh:
                    rewrite_object(self.run_dir / "tensorboard" / f, fh.read())

    # ---- end of the run
    def write_curves(self) -> None:
        """curves.png from the epoch records of metrics.jsonl (process 0; `plots.training_curves`)."""
        if not self.main:
            return
        from l2l_jax.evaluation import plots  # loads matplotlib

        self._metrics.close()
        epochs = [r for r in self._metrics.records() if r.get("kind") == "epoch"]
        png = plots.training_curves(self.run_dir / "curves.png", epochs)
        if png is not None:
            self.log.debug(f"Training curves: {png}")
        self.flush()

    def close(self, *, write: bool = True) -> None:
        """Close every file (also after an error). ``write=False``: the storage failed, the lines not yet on a
        bucket are dropped (not tried again)."""
        if not write:
            for log in (self.log, self.epochs):
                for h in log.handlers:
                    if isinstance(h, _ObjectHandler):
                        h.reset(h.text)
        if self._epoch is not None:
            self._epoch.bar.close()
        self._metrics.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        try:
            _close(self.log)
        finally:
            _close(self.epochs)
            if self._tb_local is not None:
                shutil.rmtree(self._tb_local, ignore_errors=True)
                self._tb_local = None


__all__ = ["DEBUG_FORMAT", "SUMS", "RunLog", "epoch_record", "upstream_line"]
