"""The feature extraction of `l2l-extract` (`l2l_jax.programs.extract`): clip features from video files, in
upstream's layout.

`extract` decodes every labelled video (`l2l_jax.video.decode`: each 1 s clip's first frame, RGB, and its mono
16 kHz audio) in ``workers`` threads ahead of the networks, runs the frames through
`frames.preprocess_frames` + `VisualNet` and the audio through `audio.log_mel_spectrogram` + `AudioNet`
(`Extractor`: jitted and data-parallel, batches split over all devices, ``P("data")``), and writes
``ROOT/image_features/<name>.npy`` and ``ROOT/audio_features/<name>.npy`` (float32 (T, 512), atomically). With
a video model (`l2l_jax.video.video_clips`: ``l2l-extract --video_model``) the same single decoding pass also
gives each clip's 16 frames, and the video network's features and logits go to
``ROOT/r2plus1d152_features/<name>.npy`` (float32 (T, 512)) and ``ROOT/video_logits/<name>.npy`` (float32
(T, C)). A video whose files are all present and valid (`finished_length`) is not decoded again. Frames of
different sizes go into different batches (one compilation per frame size); a last partial batch is padded.

The labels CSV (`l2l_jax.video.labels`), the manifest (`l2l_jax.video.manifest`) and the networks' weights
(`l2l_jax.video.trunks`) have their own modules; import their names from there.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import pickle
import time
from collections.abc import Iterable
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from l2l_jax import numerics, variants
from l2l_jax.outputs import atomic_save, atomic_write_bytes
from l2l_jax.video import audio as A
from l2l_jax.video import frames as F
from l2l_jax.video.decode import MAX_SECONDS, DecodeError, decode_video
from l2l_jax.video.labels import Entry
from l2l_jax.video.manifest import AUDIO_DIR, IMAGE_DIR
from l2l_jax.video.networks import AudioNet, VisualNet
from l2l_jax.video.video_clips import DEFAULT as CLIPS
from l2l_jax.video.video_clips import LOGITS_DIR, VIDEO_DIR, ClipConfig, VideoExtractor, VideoModel, decode_with_clips

WIDTH = variants.FUSION_WIDTH  # the networks' clip features: the fusion net's image and audio inputs
MAX_SEED = 2**31 - 2  # AudioNet's fresh variables use seed + 1; JAX keys take 32 bits


# ------------------------------------------------------------------------------------------------ files


def finished_length(root: Path, name: str, widths: dict[str, int] | None = None) -> int | None:
    """T when every feature file of `name` is present and valid: float32 (T, width), equal T >= 1, finite.
    `widths`: folder -> width (default: the image and audio folders, 512 each)."""
    lengths = set()
    for d, width in (widths or {IMAGE_DIR: WIDTH, AUDIO_DIR: WIDTH}).items():
        try:
            x = np.load(root / d / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != width or x.shape[0] < 1:
            return None
        if not np.isfinite(x).all():
            return None
        lengths.add(x.shape[0])
    return lengths.pop() if len(lengths) == 1 else None


def write_pickle(path: Path, feature_paths: list[str], labels: list[int]) -> None:
    """Upstream's split pickle ``(feature_paths, labels)``, written atomically."""
    atomic_write_bytes(path, pickle.dumps((list(feature_paths), [int(x) for x in labels]), protocol=2))


# ------------------------------------------------------------------------------------------------ networks


class Extractor:
    """VisualNet + AudioNet, jitted and data-parallel over `jax.devices()`: `images(frames)` and
    `audio(waveforms)` take host batches of exactly `batch_size` rows and return device arrays (B, 512). With
    `video_model`, `video` is its `VideoExtractor` (clips preprocessed as `clip_cfg` says), else None."""

    def __init__(self, visual_vars, audio_vars, *, batch_size: int, frame_size: int = 256, crop: int = 224,
                 precision: str = numerics.DEFAULT.name, devices=None, video_model: VideoModel | None = None,
                 clip_cfg: ClipConfig = CLIPS):
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
        self.video = (VideoExtractor(video_model, batch_size=batch_size, cfg=clip_cfg, precision=precision,
                                     devices=devices) if video_model is not None else None)

    def widths(self) -> dict[str, int]:
        """The folders this extractor writes, with their feature widths."""
        out = {IMAGE_DIR: WIDTH, AUDIO_DIR: WIDTH}
        if self.video is not None:
            out |= {VIDEO_DIR: WIDTH, LOGITS_DIR: self.video.num_classes}
        return out

    def images(self, frames: np.ndarray) -> jax.Array:
        return self._image(self.visual_vars, jax.device_put(frames, self.data))

    def audio(self, waves: np.ndarray) -> jax.Array:
        return self._audio(self.audio_vars, jax.device_put(waves, self.data))


# ------------------------------------------------------------------------------------------------ pipeline


@dataclasses.dataclass
class _Pending:
    """A decoded video whose clips are in flight."""

    entry: Entry
    num_clips: int
    outputs: dict[str, np.ndarray]  # folder -> (num_clips, width)
    left: int  # rows not yet filled (image + audio + video)


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

    def add(self, p: _Pending, frames: np.ndarray, waves: np.ndarray, clips: np.ndarray | None = None) -> None:
        for r in range(p.num_clips):
            self.queues[("image", frames.shape[1:])].append((p, "image", r, frames[r]))
            self.queues[("audio", waves.shape[1:])].append((p, "audio", r, waves[r]))
            if clips is not None:
                self.queues[("video", clips.shape[1:])].append((p, "video", r, clips[r]))
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
        run = {"image": self.x.images, "audio": self.x.audio, "video": self.x.video}[key[0]]
        self.inflight.append((run(data), items))
        while len(self.inflight) > self.depth:
            self._collect()

    def _collect(self) -> None:
        out, items = self.inflight.popleft()
        out = [np.asarray(o) for o in out] if isinstance(out, tuple) else np.asarray(out)
        for k, (p, kind, r, _) in enumerate(items):
            if kind == "video":
                p.outputs[VIDEO_DIR][r], p.outputs[LOGITS_DIR][r] = out[0][k], out[1][k]
            else:
                p.outputs[IMAGE_DIR if kind == "image" else AUDIO_DIR][r] = out[k]
            p.left -= 1
            if p.left == 0:
                self._write(p)

    def _write(self, p: _Pending) -> None:
        for d, x in p.outputs.items():
            if not np.isfinite(x).all():
                self.summary.skipped[p.entry.video] = f"non-finite {d} (the networks' output)"
                return
        for d, x in p.outputs.items():
            atomic_save(self.root / d / f"{p.entry.name}.npy", x)
        self.summary.extracted.append(p.entry.video)
        self.summary.lengths[p.entry.name] = p.num_clips
        self.summary.clips += p.num_clips


def _decode(path: Path, entry: Entry, max_seconds: float = MAX_SECONDS, clip_cfg: ClipConfig | None = None):
    """(entry, (decoded video, video model clips or None) or None, reason, seconds): one pass over the file."""
    t0 = time.perf_counter()
    try:
        decoded = (decode_with_clips(path, clip_cfg, max_seconds=max_seconds) if clip_cfg is not None
                   else (decode_video(path, max_seconds=max_seconds), None))
        return entry, decoded, None, time.perf_counter() - t0
    except DecodeError as e:
        return entry, None, e.reason, time.perf_counter() - t0
    except Exception as e:  # a decoder bug on one file must not stop the others: listed with the skipped
        return entry, None, f"decoding failed ({type(e).__name__}: {e})", time.perf_counter() - t0


def extract(videos: Path, entries: Iterable[Entry], root: Path, extractor: Extractor, *, workers: int = 4,
            progress: bool = True, max_seconds: float = MAX_SECONDS) -> Summary:
    """Decode and featurise every entry not already finished under `root`; write its .npy files. A video
    longer than `max_seconds`, or with implausible timing (`l2l_jax.video.decode`), is skipped with its reason."""
    summary = Summary()
    t_start = time.perf_counter()
    widths = extractor.widths()
    clip_cfg = extractor.video.cfg if extractor.video is not None else None
    for d in widths:
        (root / d).mkdir(parents=True, exist_ok=True)
    todo = []
    for e in entries:
        t = finished_length(root, e.name, widths)
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
            futures.append(pool.submit(_decode, path, e, max_seconds, clip_cfg))
            if len(futures) >= ahead:
                break
        while futures:
            entry, decoded, reason, seconds = futures.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                futures.append(pool.submit(_decode, *nxt, max_seconds, clip_cfg))
            summary.decode_s += seconds
            if decoded is None:
                summary.skipped[entry.video] = reason
            else:
                video, clips = decoded
                if not video.has_audio:
                    summary.silent.append(entry.video)
                n = video.num_clips
                p = _Pending(entry, n, {d: np.zeros((n, w), np.float32) for d, w in widths.items()},
                             (2 if clips is None else 3) * n)
                batcher.add(p, video.frames, video.audio, clips)
            bar.update(1)
            bar.set_postfix(clips=summary.clips, skipped=len(summary.skipped))
        batcher.flush()
    bar.close()
    summary.wall_s = time.perf_counter() - t_start
    return summary


__all__ = ["MAX_SEED", "WIDTH", "Extractor", "Summary", "extract", "finished_length", "write_pickle"]
