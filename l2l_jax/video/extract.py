"""`l2l-extract`: clip features from a folder of video files, in upstream's layout.

    l2l-extract VIDEOS --labels CSV --out ROOT [--split train val] [--weights_resnet18 resnet18.pth]
                [--seed 0] [--batch_size 64] [--workers 4] [--frame_size 256] [--crop 224]
                [--precision exact|fast] [--calibrate_bn] [--debug]

For every video named in the labels CSV (a file under the VIDEOS folder): decode it (`l2l_jax.video.decode`:
each 1 s clip's first frame, RGB, and its mono 16 kHz audio), run the frames through
`frames.preprocess_frames` (shorter side resized to ``--frame_size``, centre crop ``--crop``, ImageNet
normalisation) + `VisualNet`, and the audio through `audio.log_mel_spectrogram` + `AudioNet`, and write

- ``ROOT/image_features/<name>.npy`` and ``ROOT/audio_features/<name>.npy``: float32 (T, 512), one row per clip;
- ``ROOT/<split>.pkl``: upstream's pickle ``(feature_paths, labels)``, each path
  ``ROOT/imageAudio_features/<name>.npy`` (absolute; the template the loaders replace with image_features /
  audio_features, and remap with ``--feature_root`` when ROOT moves); the imageAudio files themselves are written
  by `l2l-finetune`;
- ``ROOT/classes.json`` when the labels are class names (index = position in the sorted list of names).

The labels CSV: ``video,label[,split]`` per line, an optional header line whose first field is ``video``.
``video`` is the file's path relative to VIDEOS (``a/b.mp4``); ``<name>`` is that path without its extension,
``/`` replaced by ``__`` (names must be unique). ``label``: a class index (integer >= 0) or a class name.
``split``: the split the video belongs to (``train``, ``val``, ...); without a split column every video goes to
the single split ``--split`` names (default ``train``). ``--split`` restricts the splits written.

Weights: ``--weights_resnet18 PTH`` (torchvision's ImageNet resnet18 state dict, read with the safe loader) gives
VisualNet and the ImageNet-initialised AudioNet upstream builds (its new layers drawn with ``--seed``). Without
it, both networks are freshly initialised from ``--seed`` and a warning says that such features are for testing
only; ``--calibrate_bn`` then sets their BatchNorm statistics from the data (`calibrate_batchnorm`), which
makes such features vary with the content (the demo uses it).

Speed: ``--workers`` threads decode videos (FFmpeg releases the GIL) ahead of the networks, which run jitted
and data-parallel (batches of ``--batch_size`` clips split over all devices, ``P("data")``); the device works on
one batch while the host decodes and fills the next. Frames of different sizes go into different batches
(one compilation per frame size); a last partial batch is padded.

Resumable: a video whose two .npy files are present and valid (float32 (T, 512), equal T, finite) is not
decoded again. Every file is written atomically (temporary file + ``os.replace``). A video that cannot be
read, or holds less than one clip, is listed at the end with its reason and left out of the pickles; a video
without an audio track gets silence (counted at the end). Flag and path problems exit with one line and
status 2 (``--debug``: traceback).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import csv
import dataclasses
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from l2l_jax.errors import ConfigError

WIDTH = 512
IMAGE_DIR, AUDIO_DIR, TEMPLATE_DIR = "image_features", "audio_features", "imageAudio_features"
DEFAULT_SPLIT = "train"


class RandomWeightsWarning(UserWarning):
    """The networks are freshly initialised: their features are for testing only."""


# ------------------------------------------------------------------------------------------------ labels


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the labels CSV."""

    video: str  # path relative to the VIDEOS folder
    name: str
    label: int
    split: str


def video_name(rel: str) -> str:
    """``a/b.mp4`` -> ``a__b``: the feature files' stem."""
    stem = os.path.splitext(rel.replace("\\", "/"))[0]
    return stem.strip("/").replace("/", "__")


def read_labels(path: str | os.PathLike, splits: Sequence[str] | None) -> tuple[list[Entry], list[str] | None]:
    """The CSV's rows (see the module docstring), restricted to `splits` (None: all; without a split column,
    the one split named, default train). Returns (entries, class names or None for integer labels)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--labels {path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [[c.strip() for c in r] for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"--labels {path}: unreadable ({e})") from None
    if rows and rows[0][0].lower() == "video":
        rows = rows[1:]
    if not rows:
        raise ConfigError(f"--labels {path}: no rows (expected lines 'video,label[,split]')")
    widths = {len(r) for r in rows}
    if not widths <= {2, 3} or len(widths) != 1:
        bad = next(i for i, r in enumerate(rows) if len(r) not in (2, 3) or len(r) != len(rows[0]))
        raise ConfigError(f"--labels {path}: row {bad + 1} ({','.join(rows[bad])!r}) does not have the same 2 "
                          "(video,label) or 3 (video,label,split) fields as the first row")
    has_split = widths == {3}
    if not has_split and splits is not None and len(splits) != 1:
        raise ConfigError(f"--labels {path} has no split column: --split must name one split for all its videos")
    one_split = (splits[0] if splits else DEFAULT_SPLIT) if not has_split else None
    raw = [r[1] for r in rows]
    names: list[str] | None = None
    if all(x.lstrip("+").isdigit() for x in raw):
        labels = [int(x) for x in raw]
    else:
        names = sorted(set(raw))
        index = {n: i for i, n in enumerate(names)}
        labels = [index[x] for x in raw]
    entries, seen = [], {}
    for r, label in zip(rows, labels, strict=True):
        split = r[2] if has_split else one_split
        if not split or "/" in split or split.startswith("."):
            raise ConfigError(f"--labels {path}: video {r[0]!r} has an invalid split {split!r}")
        if splits is not None and split not in splits:
            continue
        name = video_name(r[0])
        if not name:
            raise ConfigError(f"--labels {path}: empty video path")
        if name in seen:
            raise ConfigError(f"--labels {path}: videos {seen[name]!r} and {r[0]!r} both give the feature name "
                              f"{name!r}; names must be unique")
        seen[name] = r[0]
        entries.append(Entry(r[0], name, label, split))
    if not entries:
        raise ConfigError(f"--labels {path}: no video in the split(s) {', '.join(splits or [])}")
    return entries, names


# ------------------------------------------------------------------------------------------------ files


def atomic_save(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary file beside `path`, then ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finished_length(root: Path, name: str) -> int | None:
    """T when both feature files of `name` are present and valid (float32 (T, 512), equal T >= 1, finite)."""
    lengths = []
    for d in (IMAGE_DIR, AUDIO_DIR):
        try:
            x = np.load(root / d / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != WIDTH or x.shape[0] < 1:
            return None
        if not np.isfinite(x).all():
            return None
        lengths.append(x.shape[0])
    return lengths[0] if lengths[0] == lengths[1] else None


def write_pickle(path: Path, feature_paths: list[str], labels: list[int]) -> None:
    import pickle

    atomic_write_bytes(path, pickle.dumps((list(feature_paths), [int(x) for x in labels]), protocol=2))


# ------------------------------------------------------------------------------------------------ networks


class Extractor:
    """VisualNet + AudioNet, jitted and data-parallel over `jax.devices()`: `images(frames)` and
    `audio(waveforms)` take host batches of exactly `batch_size` rows and return device arrays (B, 512)."""

    def __init__(self, visual_vars, audio_vars, *, batch_size: int, frame_size: int = 256, crop: int = 224,
                 precision: str = "exact", devices=None):
        import jax
        from jax.sharding import Mesh, NamedSharding
        from jax.sharding import PartitionSpec as P

        from l2l_jax import numerics
        from l2l_jax.video import audio as A
        from l2l_jax.video import frames as F
        from l2l_jax.video.networks import AudioNet, VisualNet

        devices = list(devices if devices is not None else jax.devices())
        n = len(devices)
        self.batch_size = -(-batch_size // n) * n  # a multiple of the device count
        mesh = Mesh(np.array(devices), ("data",))
        self.data = NamedSharding(mesh, P("data"))
        replicated = NamedSharding(mesh, P())
        self.frame_cfg = F.FrameConfig(resize=frame_size, crop=crop)
        self.mel_cfg = A.DEFAULT
        policy = numerics.get(precision)
        visual, audio_net = VisualNet(policy), AudioNet(policy)
        self.visual_vars = jax.device_put(visual_vars, replicated)
        self.audio_vars = jax.device_put(audio_vars, replicated)
        frame_cfg, mel_cfg = self.frame_cfg, self.mel_cfg

        def image_features(variables, frames):
            return visual.apply(variables, F.preprocess_frames(frames, frame_cfg))

        def audio_features(variables, waves):
            return audio_net.apply(variables, A.log_mel_spectrogram(waves, mel_cfg))

        self._image = jax.jit(image_features, out_shardings=self.data)
        self._audio = jax.jit(audio_features, out_shardings=self.data)
        self._jax = jax

    def images(self, frames: np.ndarray):
        return self._image(self.visual_vars, self._jax.device_put(frames, self.data))

    def audio(self, waves: np.ndarray):
        return self._audio(self.audio_vars, self._jax.device_put(waves, self.data))


def network_weights(weights_resnet18: str | None, seed: int) -> tuple[dict, dict, str]:
    """(VisualNet variables, AudioNet variables, description)."""
    from l2l_jax.video import convert as C

    if weights_resnet18:
        if not Path(weights_resnet18).is_file():
            raise ConfigError(f"--weights_resnet18 {weights_resnet18}: no such file")
        sd = C.read_resnet18(weights_resnet18)
        what = f"--weights_resnet18 {weights_resnet18}"
        visual = C.visualnet_from_state_dict(sd, "torchvision", what=what)
        audio = C.audionet_from_resnet18(sd, seed, what=what)
        return visual, audio, f"ImageNet resnet18 from {weights_resnet18} (AudioNet's new layers: seed {seed})"
    warnings.warn("no --weights_resnet18: VisualNet and AudioNet are freshly initialised (seed "
                  f"{seed}); features from random networks are for testing only", RandomWeightsWarning,
                  stacklevel=2)
    visual = fresh_variables("visualnet", seed)
    audio = fresh_variables("audionet", seed + 1)
    return visual, audio, f"random (seed {seed}; testing only)"


def fresh_variables(net: str, seed: int) -> dict:
    """Freshly initialised variables of `net` ("visualnet" or "audionet"), drawn on the host with numpy (no
    compilation; ``networks.init_variables`` compiles a forward pass, tens of seconds on a CPU): the trunk's
    convolutions as torchvision's resnet init (``kaiming_normal_(mode="fan_out")``: N(0, 2 / (k * k * out))),
    BatchNorm scale 1, bias 0, running mean 0, var 1; AudioNet's new layers as upstream draws them
    (`networks.new_audio_layers`). Seeded: the same seed gives the same values."""
    from l2l_jax.torch_names import set_path
    from l2l_jax.video import convert as C
    from l2l_jax.video import networks as N

    rng = np.random.default_rng(seed)
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, collection, path, kind, shape in C.entries(net, "torchvision"):
        if kind == "conv":
            o, i, kh, kw = shape
            value = (rng.standard_normal((kh, kw, i, o)) * np.sqrt(2.0 / (kh * kw * o))).astype(np.float32)
        elif kind == "count":
            value = np.zeros((), np.int32)
        elif key.endswith(("weight", "running_var")):
            value = np.ones(shape, np.float32)
        else:
            value = np.zeros(shape, np.float32)
        set_path(variables[collection], path, value)
    if net == "audionet":
        new = N.new_audio_layers(seed)
        variables["params"]["resnet"]["conv1"] = {"kernel": np.asarray(new["conv1"]["kernel"])}
        variables["params"]["freq_conv1x1"] = {k: np.asarray(v) for k, v in new["freq_conv1x1"].items()}
    return variables


def calibrate_batchnorm(videos: Path, entries: Sequence[Entry], visual: dict, audio: dict, *, frame_size: int,
                        crop: int, clips: int = 64) -> tuple[dict, dict, int]:
    """``--calibrate_bn`` (random networks only): every BatchNorm's running mean and variance := the statistics
    of a train-mode forward pass over the clips of the first videos of the labels CSV (in its order, up to
    `clips` clips; deterministic, so a resumed run computes the same). A data-dependent initialisation: random
    networks whose normalisation fits the data give features that vary with the content instead of a large
    constant. Returns (visual, audio, clips used)."""
    import jax

    from l2l_jax.video import audio as A
    from l2l_jax.video import frames as F
    from l2l_jax.video.decode import DecodeError, decode_video
    from l2l_jax.video.networks import AudioNet, BatchNorm2d, VisualNet

    frames_by_shape: dict[tuple, list] = collections.defaultdict(list)
    waves = []
    for e in entries:
        if len(waves) >= clips:
            break
        try:
            v = decode_video(videos / e.video)
        except DecodeError:
            continue
        frames_by_shape[v.frames.shape[1:]].append(v.frames)
        waves.append(v.audio)
    if not waves:
        raise ConfigError("--calibrate_bn: none of the labelled videos could be decoded")
    shape = max(frames_by_shape, key=lambda k: sum(len(f) for f in frames_by_shape[k]))
    frames = np.concatenate(frames_by_shape[shape])[:clips]
    wave = np.concatenate(waves)[:clips]
    m = BatchNorm2d.momentum

    def calibrated(net, variables, x):
        _, upd = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)

        def fix(path, new, old):
            name = path[-1].key
            if name == "num_batches_tracked":
                return np.asarray(old)
            return np.asarray((np.asarray(new) - (1.0 - m) * np.asarray(old)) / m, np.float32)

        stats = jax.tree_util.tree_map_with_path(fix, upd["batch_stats"], variables["batch_stats"])
        return {**variables, "batch_stats": stats}

    cfg = F.FrameConfig(resize=frame_size, crop=crop)
    visual = calibrated(VisualNet(), visual, np.asarray(F.preprocess_frames(frames, cfg)))
    audio = calibrated(AudioNet(), audio, np.asarray(A.log_mel_spectrogram(wave)))
    return visual, audio, len(wave)


# ------------------------------------------------------------------------------------------------ pipeline


@dataclasses.dataclass
class _Pending:
    """A decoded video whose clips are in flight."""

    entry: Entry
    num_clips: int
    image: np.ndarray
    audio: np.ndarray
    left: int  # rows not yet filled (image + audio)


@dataclasses.dataclass
class Summary:
    extracted: list[str] = dataclasses.field(default_factory=list)
    resumed: list[str] = dataclasses.field(default_factory=list)
    silent: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # video -> reason
    clips: int = 0
    decode_s: float = 0.0  # summed over workers
    wall_s: float = 0.0
    lengths: dict[str, int] = dataclasses.field(default_factory=dict)  # name -> T


class _Batcher:
    """Queues clip rows by input shape, runs full batches, scatters the outputs to their videos and writes a
    video's files once all its rows are back. At most `depth` batches are in flight on the device."""

    def __init__(self, extractor: Extractor, root: Path, summary: Summary, depth: int = 2):
        self.x = extractor
        self.root = root
        self.summary = summary
        self.depth = depth
        self.queues: dict[tuple, list] = collections.defaultdict(list)  # key -> [(pending, kind, row, data)]
        self.inflight: collections.deque = collections.deque()
        self.done_names: list[str] = []

    def add(self, p: _Pending, frames: np.ndarray, waves: np.ndarray) -> None:
        for r in range(p.num_clips):
            self.queues[("image", frames.shape[1:])].append((p, "image", r, frames[r]))
            self.queues[("audio", waves.shape[1:])].append((p, "audio", r, waves[r]))
        for key in list(self.queues):
            while len(self.queues[key]) >= self.x.batch_size:
                self._run(key, self.queues[key][:self.x.batch_size])
                del self.queues[key][:self.x.batch_size]

    def flush(self) -> None:
        for key in list(self.queues):
            if self.queues[key]:
                self._run(key, self.queues[key])
            self.queues[key] = []
        while self.inflight:
            self._collect()

    def _run(self, key: tuple, items: list) -> None:
        b = self.x.batch_size
        data = np.stack([it[3] for it in items])
        if len(items) < b:
            data = np.concatenate([data, np.zeros((b - len(items), *data.shape[1:]), data.dtype)])
        out = self.x.images(data) if key[0] == "image" else self.x.audio(data)
        self.inflight.append((out, items))
        while len(self.inflight) > self.depth:
            self._collect()

    def _collect(self) -> None:
        out, items = self.inflight.popleft()
        out = np.asarray(out)
        for k, (p, kind, r, _) in enumerate(items):
            (p.image if kind == "image" else p.audio)[r] = out[k]
            p.left -= 1
            if p.left == 0:
                self._write(p)

    def _write(self, p: _Pending) -> None:
        for d, x in ((IMAGE_DIR, p.image), (AUDIO_DIR, p.audio)):
            if not np.isfinite(x).all():
                self.summary.skipped[p.entry.video] = f"non-finite {d} (the networks' output)"
                return
        atomic_save(self.root / AUDIO_DIR / f"{p.entry.name}.npy", p.audio)
        atomic_save(self.root / IMAGE_DIR / f"{p.entry.name}.npy", p.image)
        self.summary.extracted.append(p.entry.video)
        self.summary.lengths[p.entry.name] = p.num_clips
        self.summary.clips += p.num_clips


def _decode(path: Path, entry: Entry):
    from l2l_jax.video.decode import DecodeError, decode_video

    t0 = time.perf_counter()
    try:
        return entry, decode_video(path), None, time.perf_counter() - t0
    except DecodeError as e:
        return entry, None, e.reason, time.perf_counter() - t0
    except Exception as e:  # a decoder bug on one file must not stop the others: listed with the skipped
        return entry, None, f"decoding failed ({type(e).__name__}: {e})", time.perf_counter() - t0


def extract(videos: Path, entries: Iterable[Entry], root: Path, extractor: Extractor, *, workers: int = 4,
            progress: bool = True) -> Summary:
    """Decode and featurise every entry not already finished under `root`; write its .npy files."""
    from tqdm.auto import tqdm

    summary = Summary()
    t_start = time.perf_counter()
    for d in (IMAGE_DIR, AUDIO_DIR):
        (root / d).mkdir(parents=True, exist_ok=True)
    todo = []
    for e in entries:
        t = finished_length(root, e.name)
        if t is not None:
            summary.resumed.append(e.video)
            summary.lengths[e.name] = t
            continue
        path = videos / e.video
        if not path.is_file():
            summary.skipped[e.video] = "no such file" if not path.exists() else "not a regular file"
            continue
        todo.append((path, e))
    batcher = _Batcher(extractor, root, summary)
    bar = tqdm(total=len(todo), desc="extract", unit="video", disable=not progress)
    with cf.ThreadPoolExecutor(max(1, workers), thread_name_prefix="l2l-decode") as pool:
        ahead = max(2, 2 * workers)  # videos decoded ahead of the networks (bounds host memory)
        it = iter(todo)
        futures: collections.deque = collections.deque()
        for path, e in it:
            futures.append(pool.submit(_decode, path, e))
            if len(futures) >= ahead:
                break
        while futures:
            entry, video, reason, seconds = futures.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                futures.append(pool.submit(_decode, *nxt))
            summary.decode_s += seconds
            if video is None:
                summary.skipped[entry.video] = reason
            else:
                if not video.has_audio:
                    summary.silent.append(entry.video)
                n = video.num_clips
                p = _Pending(entry, n, np.zeros((n, WIDTH), np.float32), np.zeros((n, WIDTH), np.float32), 2 * n)
                batcher.add(p, video.frames, video.audio)
            bar.update(1)
            bar.set_postfix(clips=summary.clips, skipped=len(summary.skipped))
        batcher.flush()
    bar.close()
    summary.wall_s = time.perf_counter() - t_start
    return summary


# ------------------------------------------------------------------------------------------------ program


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2l-extract", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", help="folder holding the video files the labels CSV names")
    p.add_argument("--labels", required=True, help="CSV: video,label[,split] (video relative to VIDEOS)")
    p.add_argument("--out", required=True, help="feature root ROOT (image_features/, audio_features/, <split>.pkl)")
    p.add_argument("--split", nargs="+", default=None,
                   help="splits to write (default: all in the CSV; without a split column: the one split, train)")
    p.add_argument("--weights_resnet18", default=None, help="ImageNet resnet18 .pth (torchvision names)")
    p.add_argument("--seed", type=int, default=0, help="seed of new/fresh network layers (default 0)")
    p.add_argument("--batch_size", type=int, default=64, help="clips per network batch, all devices (default 64)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="decoding threads (default min(8, CPUs))")
    p.add_argument("--frame_size", type=int, default=256, help="shorter side after resizing (default 256)")
    p.add_argument("--crop", type=int, default=224, help="centre crop (default 224)")
    p.add_argument("--calibrate_bn", action="store_true",
                   help="random networks only: BatchNorm statistics from the first 64 clips of the CSV's videos")
    p.add_argument("--precision", choices=["exact", "fast"], default="exact",
                   help="exact: float32 convolutions; fast: bfloat16 operands (GPU/TPU)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="traceback instead of a one-line error")
    return p


def _report(summary: Summary, root: Path, written: dict[str, int], weights_desc: str) -> None:
    s = summary
    rate = s.clips / s.wall_s if s.wall_s > 0 else 0.0
    print(f"extracted {len(s.extracted)} videos ({s.clips} clips, {rate:.1f} clips/s) in {s.wall_s:.1f} s; "
          f"already done: {len(s.resumed)}; weights: {weights_desc}")
    if s.silent:
        print(f"{len(s.silent)} video(s) without an audio track got silence: {', '.join(s.silent)}")
    if s.skipped:
        print(f"skipped {len(s.skipped)} video(s):")
        for video, reason in s.skipped.items():
            print(f"  {video}: {reason}")
    for split, n in written.items():
        print(f"wrote {root / (split + '.pkl')}: {n} videos")
    from l2l_jax.data.collate import MIN_CLIPS

    short = sum(1 for t in s.lengths.values() if t < MIN_CLIPS)
    if short:
        print(f"note: {short} video(s) have fewer than {MIN_CLIPS} clips; l2l-train and l2l-eval need a video of at "
              f"least {MIN_CLIPS} clips in every batch (upstream's collate)")


def main(argv: Sequence[str] | None = None) -> int:
    from l2l_jax.cli import run_program

    return run_program("extract", lambda: _main(argv), argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    videos, root = Path(args.videos), Path(args.out).absolute()
    if not videos.is_dir():
        raise ConfigError(f"VIDEOS {videos}: not a directory")
    for flag in ("batch_size", "workers", "frame_size", "crop"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag} must be at least 1, not {getattr(args, flag)}")
    if args.crop > args.frame_size:
        raise ConfigError(f"--crop {args.crop} is larger than --frame_size {args.frame_size}")
    entries, class_names = read_labels(args.labels, args.split)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {root}: cannot create ({e.strerror or e})") from None
    if args.calibrate_bn and args.weights_resnet18:
        raise ConfigError("--calibrate_bn is for random networks; --weights_resnet18 keeps resnet18's statistics")
    visual, audio, desc = network_weights(args.weights_resnet18, args.seed)
    if args.calibrate_bn:
        visual, audio, n = calibrate_batchnorm(videos, entries, visual, audio, frame_size=args.frame_size,
                                               crop=args.crop)
        desc += f", BatchNorm statistics from {n} clips"
    extractor = Extractor(visual, audio, batch_size=args.batch_size, frame_size=args.frame_size, crop=args.crop,
                          precision=args.precision)
    summary = extract(videos, entries, root, extractor, workers=args.workers, progress=not args.no_progress)
    if class_names is not None:
        atomic_write_bytes(root / "classes.json", json.dumps(class_names, indent=1).encode())
    written: dict[str, int] = {}
    for split in sorted({e.split for e in entries}):
        rows = [e for e in entries if e.split == split and e.name in summary.lengths]
        write_pickle(root / f"{split}.pkl", [str(root / TEMPLATE_DIR / f"{e.name}.npy") for e in rows],
                     [e.label for e in rows])
        written[split] = len(rows)
    _report(summary, root, written, desc)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Entry", "Extractor", "calibrate_batchnorm", "RandomWeightsWarning", "Summary", "extract", "finished_length",
           "main", "network_weights", "read_labels", "video_name"]
