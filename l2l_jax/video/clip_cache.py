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

Host memory stays bounded whatever the dataset size: the files are opened with ``np.memmap`` and a batch copies
only its own rows. Videos that cannot be decoded are listed in ``index.json`` with their reason and skipped.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from l2l_jax.errors import ConfigError
from l2l_jax.outputs import atomic_write_text

FRAMES, LOGMEL, INDEX = "frames.u8", "logmel.f32", "index.json"
VERSION = 1


def square_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8: shorter side resized to `size` (PIL bilinear), centre
    square kept."""
    from PIL import Image

    from l2l_jax.video.frames import center_crop_offsets, resized_size

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
        import jax

        from l2l_jax.video import audio as A

        self.cfg = A.DEFAULT
        self._fn = jax.jit(lambda w: A.log_mel_spectrogram(w, A.DEFAULT))

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


def _decode(path: Path, frame_size: int):
    from l2l_jax.video.decode import DecodeError, decode_video

    try:
        v = decode_video(path)
    except DecodeError as e:
        return None, None, e.reason
    except Exception as e:  # a decoder bug on one file must not stop the others
        return None, None, f"decoding failed ({type(e).__name__}: {e})"
    return square_frames(v.frames, frame_size), v.audio, None


def build_cache(videos_dir: str | os.PathLike, entries: Sequence[Any], root: str | os.PathLike, *,
                frame_size: int = 256, workers: int = 4, progress: bool = True) -> ClipCache:
    """Decode every entry (`l2l_jax.video.extract.Entry`: video path relative to `videos_dir`, name, label,
    split) not yet in the cache at `root` and append its clips; returns the opened cache. A cache made with
    another frame size is a `ConfigError` (delete it or pass that size)."""
    from tqdm.auto import tqdm

    root, videos_dir = Path(root), Path(videos_dir)
    root.mkdir(parents=True, exist_ok=True)
    logmel = _LogMel()
    mel_shape = (int(logmel.cfg.clip_samples // logmel.cfg.hop_length + 1), logmel.cfg.n_mels)
    index: dict[str, Any] = {"version": VERSION, "frame_size": frame_size, "mel_shape": list(mel_shape),
                             "videos": [], "skipped": {}}
    if (root / INDEX).is_file():
        old = ClipCache(root)
        if old.frame_size != frame_size or tuple(old.mel_shape) != mel_shape:
            raise ConfigError(f"--cache {root} holds {old.frame_size} x {old.frame_size} frames; pass "
                              f"--frame_size {old.frame_size} or delete the cache to rebuild it")
        index["videos"] = [dataclasses.asdict(v) for v in old.videos]
    done = {v["video"]: v for v in index["videos"]}
    rows = sum(v["clips"] for v in index["videos"])
    frame_bytes, mel_bytes = frame_size * frame_size * 3, int(np.prod(mel_shape)) * 4
    for name, per in ((FRAMES, frame_bytes), (LOGMEL, mel_bytes)):  # cut rows a killed build appended
        with open(root / name, "ab") as f:
            f.truncate(rows * per)
    todo = []
    for e in entries:
        path = videos_dir / e.video
        if not path.is_file():
            index["skipped"][e.video] = "no such file" if not path.exists() else "not a regular file"
            continue
        st = path.stat()
        v = done.get(e.video)
        if v is not None and (v["size"], v["mtime_ns"], v["label"], v["split"]) == (st.st_size, st.st_mtime_ns,
                                                                                     e.label, e.split):
            continue
        todo.append((path, e, st))
    if any(done.get(e.video) is not None for _, e, _ in todo):  # a changed video: rebuild from scratch
        changed = next(e.video for _, e, _ in todo if e.video in done)
        raise ConfigError(f"--cache {root}: {changed} changed since it was cached (or its label or split did); "
                          "delete the cache to rebuild it")
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
    atomic_write_text(root / INDEX, json.dumps(index))
    return ClipCache(root)


__all__ = ["CachedVideo", "ClipCache", "build_cache", "square_frames"]
