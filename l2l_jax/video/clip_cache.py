"""Decoded clips cached once on disk, read as memory maps: what `l2l-distill` trains on.

Decoding a video and computing its log-mels costs more than a training step on an accelerator, and epochs see
every clip many times, so `build_cache` decodes each video once (`l2l_jax.video.decode`) and appends its
clips to two flat files:

- ``frames.u8``: uint8 RGB, one ``(S, S, 3)`` frame per clip: the clip's first frame, shorter side resized to
  S (``frame_size``, bilinear, as torchvision's ``Resize`` on a PIL image) and its centre S x S square kept;
  training crops ``crop`` x ``crop`` out of it (`ClipCache.batch`), at random with ``random_crop`` and in the
  centre otherwise (the centre crop is the frame `l2l-extract` gives VisualNet, to within a pixel of offset);
- ``logmel.f32``: float32 ``(T, F)`` log-mel per clip (`l2l_jax.video.audio`, default settings: 101 x 40);
- ``index.json``: settings, and per video its name, label, split, first clip row, clip count and the source
  file's size and mtime; written atomically after every video, so a killed build resumes where it stopped
  (rows past the index are cut off) and videos already cached are not decoded again.

One cache may serve several labels CSVs: a run uses only the clips of the videos its own CSV lists, with the
CSV's labels and splits (`ClipCache.select`). Runs that add videos to one cache at once take turns: each holds
``.cache.lock`` (``fcntl.flock``) while it appends (`cache_lock`); readers never wait, since rows are only ever
appended and the index, written after its rows, never names a row that is not there.

Host memory stays bounded whatever the dataset size: the files are opened with ``np.memmap`` and a batch copies
only its own rows. Videos that cannot be decoded are listed in ``index.json`` with their reason and skipped.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from l2l_jax.errors import ConfigError
from l2l_jax.outputs import atomic_write_text
from l2l_jax.video import audio as A
from l2l_jax.video.decode import DecodeError, decode_video
from l2l_jax.video.frames import center_crop_offsets, resized_size

FRAMES, LOGMEL, INDEX, LOCK = "frames.u8", "logmel.f32", "index.json", ".cache.lock"
VERSION = 1


def square_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8: shorter side resized to `size` (PIL bilinear), centre
    square kept."""
    n, h, w, _ = frames.shape
    nh, nw = resized_size(h, w, size)
    top, left = center_crop_offsets(nh, nw, size)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = Image.fromarray(frames[i])
        if (nh, nw) != (h, w):
            img = img.resize((nw, nh), Image.BILINEAR)
        out[i] = np.asarray(img)[top:top + size, left:left + size]
    return out


class _LogMel:
    """Jitted log-mel of clip rows, padded to multiples of 16 rows so few shapes compile."""

    def __init__(self):
        self.cfg = self.config()
        self._fn = jax.jit(lambda w: A.log_mel_spectrogram(w, A.DEFAULT))

    @staticmethod
    def config() -> A.LogMelConfig:
        return A.DEFAULT

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        n = len(waves)
        padded = np.zeros((-(-n // 16) * 16, waves.shape[1]), np.float32)
        padded[:n] = waves
        return np.asarray(self._fn(padded))[:n]


@dataclasses.dataclass
class CachedVideo:
    """One video of the cache: its clips are rows ``start .. start + clips - 1``."""

    video: str
    name: str
    label: int
    split: str
    start: int
    clips: int
    size: int
    mtime_ns: int


class ClipCache:
    """An opened cache (read-only memory maps): ``frames`` (N, S, S, 3) uint8, ``logmel`` (N, T, F) float32,
    ``videos`` (list of `CachedVideo`), ``clip_video`` (N,) int32 index into ``videos``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            index = json.loads((self.root / INDEX).read_text())
            self.frame_size = int(index["frame_size"])
            self.mel_shape = tuple(int(x) for x in index["mel_shape"])
            self.videos = [CachedVideo(**v) for v in index["videos"]]
            self.skipped: dict[str, str] = dict(index.get("skipped", {}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"--cache {self.root}: not a clip cache ({type(e).__name__}: {e}); delete it to "
                              "rebuild") from None
        self.num_clips = sum(v.clips for v in self.videos)
        s = self.frame_size
        self.frames = self._open(FRAMES, np.uint8, (s, s, 3))
        self.logmel = self._open(LOGMEL, np.float32, self.mel_shape)
        self.clip_video = np.repeat(np.arange(len(self.videos), dtype=np.int32),
                                    [v.clips for v in self.videos]).astype(np.int32)

    def _open(self, name: str, dtype: Any, row: tuple[int, ...]) -> np.ndarray:
        path = self.root / name
        need = self.num_clips * int(np.prod(row)) * np.dtype(dtype).itemsize
        if not path.is_file() or path.stat().st_size < need:
            raise ConfigError(f"--cache {self.root}: {name} is missing or shorter than its index says; delete the "
                              "cache to rebuild")
        if self.num_clips == 0:
            return np.zeros((0, *row), dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=(self.num_clips, *row))

    def rows(self, split: str | None = None) -> np.ndarray:
        """Clip rows of the videos of `split` (None: all), in cache order."""
        keep = [i for i, v in enumerate(self.videos) if split is None or v.split == split]
        if not keep:
            return np.zeros((0,), np.int64)
        return np.concatenate([np.arange(self.videos[i].start, self.videos[i].start + self.videos[i].clips)
                               for i in keep])

    def labels(self) -> np.ndarray:
        """(N,) int32: every clip's video label."""
        return np.asarray([v.label for v in self.videos], np.int32)[self.clip_video]

    def select(self, entries: Sequence[Any]) -> ClipSelection:
        """The clips of the videos `entries` lists (labels CSV entries), with the entries' names, labels and
        splits, in cache order; the other videos of the cache are left out. An entry neither cached nor
        skipped is listed as skipped ("not in the cache")."""
        cached = {v.video: v for v in self.videos}
        videos, skipped = [], {}
        for e in entries:
            v = cached.get(e.video)
            if v is not None:
                videos.append(dataclasses.replace(v, name=e.name, label=int(e.label), split=e.split))
            else:
                skipped[e.video] = self.skipped.get(e.video, "not in the cache")
        videos.sort(key=lambda v: v.start)
        return ClipSelection(self, videos, skipped)

    def batch(self, rows: np.ndarray, crop: int, rng: np.random.Generator | None = None, *,
              flip: bool = False) -> dict[str, np.ndarray]:
        """{"frames": (B, crop, crop, 3) uint8, "logmel": (B, T, F) float32} of `rows`: a centre crop, or with
        `rng` a random crop (and, with `flip`, a horizontal flip of half the rows, drawn from `rng`)."""
        rows = np.asarray(rows)
        order = np.argsort(rows, kind="stable")  # read the memory maps in file order
        frames = np.empty((len(rows), self.frame_size, self.frame_size, 3), np.uint8)
        frames[order] = self.frames[rows[order]]
        logmel = np.empty((len(rows), *self.mel_shape), np.float32)
        logmel[order] = self.logmel[rows[order]]
        s = self.frame_size
        if crop > s:
            raise ConfigError(f"--crop {crop} is larger than the cache's frames ({s} x {s})")
        if rng is None:
            top = left = np.full(len(rows), int(round((s - crop) / 2.0)))
            flips = np.zeros(len(rows), bool)
        else:
            top, left = rng.integers(0, s - crop + 1, (2, len(rows)))
            flips = rng.random(len(rows)) < 0.5 if flip else np.zeros(len(rows), bool)
        out = np.empty((len(rows), crop, crop, 3), np.uint8)
        for i in range(len(rows)):
            f = frames[i, top[i]:top[i] + crop, left[i]:left[i] + crop]
            out[i] = f[:, ::-1] if flips[i] else f
        return {"frames": out, "logmel": logmel}


class ClipSelection:
    """The clips of some of a cache's videos (`ClipCache.select`): local clip ``i`` (0 .. ``num_clips`` - 1) is
    the cache's row ``rows[i]``; ``videos`` (their `CachedVideo`, label and split those of the labels CSV at
    hand), ``skipped`` (video -> reason, of the selected videos only)."""

    def __init__(self, cache: ClipCache, videos: list[CachedVideo], skipped: dict[str, str]):
        self.cache, self.videos, self.skipped = cache, videos, skipped
        self.rows = (np.concatenate([np.arange(v.start, v.start + v.clips) for v in videos]) if videos
                     else np.zeros((0,), np.int64))
        self.clip_video = np.repeat(np.arange(len(videos), dtype=np.int32), [v.clips for v in videos])
        self.num_clips = len(self.rows)

    def split_rows(self, split: str) -> np.ndarray:
        """Local clip indices of the videos of `split`, in order."""
        keep = np.asarray([v.split == split for v in self.videos], bool)
        return np.flatnonzero(keep[self.clip_video]) if self.videos else np.zeros((0,), np.int64)

    def labels(self) -> np.ndarray:
        """(num_clips,) int32: every clip's video label."""
        return np.asarray([v.label for v in self.videos], np.int32)[self.clip_video]

    def batch(self, local: np.ndarray, crop: int, rng: np.random.Generator | None = None, *,
              flip: bool = False) -> dict[str, np.ndarray]:
        """`ClipCache.batch` of the local clips `local`."""
        return self.cache.batch(self.rows[np.asarray(local)], crop, rng, flip=flip)


def _decode(path: Path, frame_size: int):
    try:
        v = decode_video(path)
    except DecodeError as e:
        return None, None, e.reason
    except Exception as e:  # a decoder bug on one file must not stop the others
        return None, None, f"decoding failed ({type(e).__name__}: {e})"
    return square_frames(v.frames, frame_size), v.audio, None


@contextlib.contextmanager
def cache_lock(root: Path, note: Callable[[str], None] | None = None) -> Iterator[None]:
    """Holds ``root/.cache.lock`` (``fcntl.flock``, exclusive) while the block runs: one writer at a time, in
    any process. A lock held by another run is waited for (`note` is told once). The kernel releases it when
    its holder ends, also on a kill, so no stale lock is ever left behind."""
    fd = os.open(root / LOCK, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if note is not None:
                note(f"--cache {root}: another run is adding videos to it; waiting until it is done")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _start_index(root: Path, frame_size: int, mel_shape: tuple[int, int]) -> dict[str, Any]:
    """The index to extend: the cache's own (checked against `frame_size`), or a new one; rows a killed build
    appended past it are cut off. Under `cache_lock`."""
    index: dict[str, Any] = {"version": VERSION, "frame_size": frame_size, "mel_shape": list(mel_shape),
                             "videos": [], "skipped": {}}
    if (root / INDEX).is_file():
        old = ClipCache(root)
        if old.frame_size != frame_size or tuple(old.mel_shape) != mel_shape:
            raise ConfigError(f"--cache {root} holds {old.frame_size} x {old.frame_size} frames; pass "
                              f"--frame_size {old.frame_size} or delete the cache to rebuild it")
        index["videos"] = [dataclasses.asdict(v) for v in old.videos]
        index["skipped"] = dict(old.skipped)
    rows = sum(v["clips"] for v in index["videos"])
    for name, per in ((FRAMES, frame_size * frame_size * 3), (LOGMEL, int(np.prod(mel_shape)) * 4)):
        with open(root / name, "ab") as f:
            f.truncate(rows * per)
    return index


def _todo(root: Path, videos_dir: Path, entries: Sequence[Any], index: dict[str, Any]) -> list[tuple]:
    """(path, entry, stat) of every entry not yet cached; missing files go to ``index["skipped"]``. A cached
    video whose file changed since is a `ConfigError`."""
    done = {v["video"]: v for v in index["videos"]}
    todo = []
    for e in entries:
        path = videos_dir / e.video
        if not path.is_file():
            index["skipped"][e.video] = "no such file" if not path.exists() else "not a regular file"
            continue
        st = path.stat()
        v = done.get(e.video)
        if v is None:
            todo.append((path, e, st))
        elif (v["size"], v["mtime_ns"]) != (st.st_size, st.st_mtime_ns):
            raise ConfigError(f"--cache {root}: {e.video} changed since it was cached; delete the cache to rebuild "
                              "it")
    return todo


def _append(root: Path, todo: list[tuple], index: dict[str, Any], frame_size: int, workers: int,
            progress: bool) -> None:
    """Decode `todo` in `workers` threads and append each video's clips, then its index entry (atomically)."""
    logmel = _LogMel()
    rows = sum(v["clips"] for v in index["videos"])
    bar = tqdm(total=len(todo), desc="cache clips", unit="video", disable=not progress or not todo)
    with cf.ThreadPoolExecutor(max(1, workers), thread_name_prefix="l2l-cache") as pool, \
            open(root / FRAMES, "ab") as ff, open(root / LOGMEL, "ab") as fm:
        ahead = 2 * max(1, workers)  # videos decoded ahead (bounds host memory)
        futures = [pool.submit(_decode, path, frame_size) for path, _, _ in todo[:ahead]]
        for k, (_, e, st) in enumerate(todo):
            frames, audio, reason = futures[k].result()
            futures[k] = None
            if k + ahead < len(todo):
                futures.append(pool.submit(_decode, todo[k + ahead][0], frame_size))
            if frames is None:
                index["skipped"][e.video] = reason
            else:
                mel = logmel(audio)
                ff.write(np.ascontiguousarray(frames).tobytes())
                fm.write(np.ascontiguousarray(mel, np.float32).tobytes())
                ff.flush()
                fm.flush()
                index["videos"].append(dataclasses.asdict(CachedVideo(e.video, e.name, int(e.label), e.split, rows,
                                                                      len(frames), st.st_size, st.st_mtime_ns)))
                index["skipped"].pop(e.video, None)
                rows += len(frames)
                atomic_write_text(root / INDEX, json.dumps(index))
            bar.update(1)
    bar.close()


def build_cache(videos_dir: str | os.PathLike, entries: Sequence[Any], root: str | os.PathLike, *,
                frame_size: int = 256, workers: int = 4, progress: bool = True,
                note: Callable[[str], None] | None = None) -> ClipSelection:
    """Decode every entry (`l2l_jax.video.labels.Entry`: video path relative to `videos_dir`, name, label,
    split) not yet in the cache at `root` and append its clips, holding `cache_lock` (a second run waits: `note`
    is told); returns the clips of `entries` only (`ClipCache.select`). A cache made with another frame size,
    or holding a video whose file changed since, is a `ConfigError`."""
    root, videos_dir = Path(root), Path(videos_dir)
    root.mkdir(parents=True, exist_ok=True)
    cfg = _LogMel.config()
    mel_shape = (int(cfg.clip_samples // cfg.hop_length + 1), cfg.n_mels)
    with cache_lock(root, note):
        index = _start_index(root, frame_size, mel_shape)
        todo = _todo(root, videos_dir, entries, index)
        _append(root, todo, index, frame_size, workers, progress)
        atomic_write_text(root / INDEX, json.dumps(index))
    return ClipCache(root).select(entries)


__all__ = ["CachedVideo", "ClipCache", "ClipSelection", "build_cache", "cache_lock", "square_frames"]
