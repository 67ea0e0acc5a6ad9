"""Where clip features come from: per-file `.npy` (upstream's layout) or a packed split (`l2l-pack`).

Both give the loader the same interface: labels, ids, lengths (clips per video), and `read_into`, which
copies rows [start, stop) (every `step`-th, for --feature_subsample) of one video straight into slices of
the batch arrays. Per-file reading parses each `.npy` header once and then reads only the requested rows.
`open_split` picks a packed copy of a pickle when one is up to date, else the validated per-file split.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .index import MODALITY_KEYS, DatasetError, Variant, load_index, npy_header
from .validate import ScanResult, check_split

PACK_FORMAT = "l2l-pack"
PACK_VERSION = 1


class FeatureSource:
    """A split's videos: `labels`, `ids` (pickle row), `lengths` (raw clip counts), `width`, `dtype` (of
    the batches it feeds) and `read_into`."""

    variant: Variant
    keys: tuple[str, ...]
    width: int
    dtype: np.dtype
    labels: np.ndarray
    ids: np.ndarray
    lengths: np.ndarray
    names: list[str]  # video names (stem of the feature file), for exports and plots
    kind: str

    def __len__(self) -> int:
        return len(self.labels)

    def read_into(self, i: int, start: int, stop: int, step: int, dests: Sequence[np.ndarray]) -> None:
        """Copy rows `[start:stop:step]` of video `i` into `dests` (one (n, width) view per modality)."""
        raise NotImplementedError

    def read(self, i: int, start: int = 0, stop: int | None = None, step: int = 1) -> tuple[np.ndarray, ...]:
        """Rows `[start:stop:step]` of video `i`, one array per modality."""
        stop = int(self.lengths[i]) if stop is None else min(stop, int(self.lengths[i]))
        n = len(range(start, stop, step))
        outs = tuple(np.empty((n, self.width), self.dtype) for _ in self.keys)
        self.read_into(i, start, stop, step, outs)
        return outs

    def check_labels(self, num_classes: int) -> None:
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= num_classes))
        if len(bad):
            lines = [f"  [{int(self.ids[i])}] label {int(self.labels[i])} not in [0, {num_classes})" for i in bad]
            raise DatasetError(f"{len(bad)} label problem(s):\n" + "\n".join(lines))


class FileSource(FeatureSource):
    """Per-video `.npy` files of a validated split; batches are float32, as upstream converts them."""

    kind = "files"

    def __init__(self, scan: ScanResult):
        self.index = scan.index
        self.variant = scan.index.variant
        self.keys = MODALITY_KEYS[self.variant]
        self.width = scan.width
        self.dtype = np.dtype(np.float32)
        self.labels = scan.index.labels
        self.ids = scan.index.ids
        self.lengths = np.asarray(scan.lengths, np.int64)
        self.names = [Path(t).stem for t in scan.index.templates]
        self._headers: dict[str, tuple[int, tuple[int, ...], np.dtype, bool]] = {}

    def _header(self, path: str):
        h = self._headers.get(path)
        if h is None:
            h = npy_header(path)
            _, shape, dtype, _ = h
            if dtype.name not in ("float32", "float16") or len(shape) != 2 or shape[1] != self.width:
                raise DatasetError(f"{path}: now {dtype} {shape}, not what the validation scan saw; file changed?")
            self._headers[path] = h
        return h

    def read_into(self, i: int, start: int, stop: int, step: int, dests: Sequence[np.ndarray]) -> None:
        for path, dest in zip(self.index.paths[i], dests, strict=True):
            offset, shape, dtype, fortran = self._header(path)
            if fortran:
                arr = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F")
                dest[...] = arr[start:stop:step]
                del arr
                continue
            rows = stop - start
            row_bytes = shape[1] * dtype.itemsize
            direct = step == 1 and dtype == dest.dtype and dest.flags.c_contiguous
            buf = dest if direct else np.empty((rows, shape[1]), dtype)
            with open(path, "rb", buffering=0) as f:
                f.seek(offset + start * row_bytes)
                got = f.readinto(buf)
            if got != rows * row_bytes:
                raise DatasetError(f"{path}: short read ({got} of {rows * row_bytes} bytes); file changed?")
            if not direct:
                dest[...] = buf[::step]


class PackedSource(FeatureSource):
    """A split packed by `l2l-pack`: one memory-mapped (total_clips, width) array per modality plus offsets."""

    kind = "packed"

    def __init__(self, pack_dir: str | os.PathLike):
        self.dir = Path(pack_dir)
        self.meta = read_pack_meta(self.dir)
        self.variant = self.meta["variant"]
        self.keys = tuple(self.meta["keys"])
        self.arrays = [np.load(self.dir / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in self.keys]
        self.offsets = np.load(self.dir / "offsets.npy", allow_pickle=False).astype(np.int64)
        self.labels = np.load(self.dir / "labels.npy", allow_pickle=False).astype(np.int64)
        self.ids = np.load(self.dir / "ids.npy", allow_pickle=False).astype(np.int64)
        self.lengths = np.diff(self.offsets)
        names_file = self.dir / "names.json"
        self.names = json.loads(names_file.read_text()) if names_file.exists() else [str(i) for i in self.ids]
        self.width = int(self.arrays[0].shape[1])
        self.dtype = self.arrays[0].dtype
        if len(self.offsets) != len(self.labels) + 1 or self.offsets[-1] != self.arrays[0].shape[0]:
            raise DatasetError(f"{self.dir}: offsets do not match the packed arrays")

    def read_into(self, i: int, start: int, stop: int, step: int, dests: Sequence[np.ndarray]) -> None:
        base = int(self.offsets[i])
        for arr, dest in zip(self.arrays, dests, strict=True):
            dest[...] = arr[base + start : base + stop : step]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_pack_meta(pack_dir: str | os.PathLike) -> dict:
    meta_path = Path(pack_dir) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{pack_dir}: not a packed split ({e})") from e
    if meta.get("format") != PACK_FORMAT or meta.get("version") != PACK_VERSION:
        raise DatasetError(f"{pack_dir}: unknown pack format {meta.get('format')} v{meta.get('version')}")
    return meta


def default_pack_dir(pickle_path: str | os.PathLike) -> Path:
    """Where `l2l-pack` puts a pickle's packed copy by default: `<dir>/<stem>.pack`."""
    p = Path(pickle_path)
    return p.parent / f"{p.stem}.pack"


def _root_key(feature_root) -> str | None:
    return None if feature_root is None else os.path.abspath(os.fspath(feature_root))


def pack_matches(pack_dir: Path, pickle_path: str | os.PathLike, variant: Variant, feature_root) -> bool:
    """Whether `pack_dir` was packed from this very pickle (by content), variant and feature root."""
    try:
        meta = read_pack_meta(pack_dir)
    except DatasetError:
        return False
    return (meta.get("variant") == variant and meta.get("feature_root") == _root_key(feature_root)
            and meta.get("pickle_sha256") == file_sha256(pickle_path))


def open_split(path: str | os.PathLike, *, variant: Variant = "two", num_classes: int,
               feature_root: str | os.PathLike | None = None, width: int | None = 512,
               skip_bad_videos: bool = False, packed: bool | str | os.PathLike | None = None,
               cache: str | os.PathLike | bool | None = True, progress: bool = True) -> FeatureSource:
    """A split ready for the loader, from an upstream pickle or a pack directory.

    For a pickle, `packed=None` uses `<stem>.pack/` beside it when it was packed from the same pickle
    (same variant and --feature_root), else validates the per-file features (scan, cached); `packed=False`
    forces per-file reading; a path names the pack directory to use. Labels are checked against
    `num_classes`; the feature width against `width` (None: any, consistent).
    """
    path = Path(path)
    pack_dir: Path | None = None
    if path.is_dir():
        pack_dir = path
    elif packed not in (None, False, True):
        pack_dir = Path(packed)
    elif packed is not False:
        cand = default_pack_dir(path)
        if (cand / "meta.json").exists():
            if pack_matches(cand, path, variant, feature_root):
                pack_dir = cand
            elif packed is True:
                raise DatasetError(f"{cand} was not packed from {path} (variant/feature_root/content differ)")
            elif progress:
                print(f"note: {cand} is out of date for {path}; reading per-file features")
        elif packed is True:
            raise DatasetError(f"no packed copy at {cand}; run l2l-pack {path}")
    if pack_dir is not None:
        src = PackedSource(pack_dir)
        if src.variant != variant:
            raise DatasetError(f"{pack_dir} holds the {src.variant!r} variant, not {variant!r}")
        if width is not None and src.width != width:
            raise DatasetError(f"{pack_dir}: width {src.width}; expected {width}")
        src.check_labels(num_classes)
        return src
    index = load_index(path, variant=variant, feature_root=feature_root)
    scan = check_split(index, num_classes=num_classes, width=width, skip_bad_videos=skip_bad_videos,
                       cache=cache, progress=progress)
    return FileSource(scan)
