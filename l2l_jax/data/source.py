"""Where clip features come from: per-file `.npy` (upstream's layout) or a packed split (`l2l-pack`).

Both give the loader the same interface: labels, ids, lengths (clips per video), and `read_into`, which
copies rows [start, stop) (every `step`-th, for --feature_subsample) of one video straight into slices of
the batch arrays. Per-file reading parses each `.npy` header once and then reads only the requested rows;
every read checks first that the file is still a regular file (a FIFO or device is never opened).

`open_split` picks a packed copy of a pickle only when it is up to date: packed from this very pickle
(SHA-256), with the same variant and --feature_root, by this pack format (v2, which records its sources), and
every source feature file still has the size, mtime and content digest recorded when it was packed
(`fingerprint.py`: a stat and a few small reads per file, never a full read). A pack found beside the pickle
that fails any of these is not used: a `StalePackWarning` names it and the first changed files, and the
validated per-file features are read instead (re-run `l2l-pack` to refresh the pack; nothing is rebuilt on
its own). A pack the caller names explicitly (a pack directory, `packed=<dir>` or `packed=True`) that fails
them is a `DatasetError`, since the caller asked for exactly that pack.

On a URL (``gs://...``) nothing is memory-mapped. Per-file features are read with one ranged read per file
and video. A pack on a bucket is read with ranged reads too, and the loader hands it a whole batch at once
(`PackedSource.read_many`): one `storage.read_ranges` call per modality array per batch, carrying every
video's rows of the batch as ranges (ranges closer than `MERGE_GAP` bytes merged into one), so a batch costs
at most K calls (K modality arrays) and at most K requests per batch of videos that lie together in the pack
(evaluation in the split's order). A folder on a bucket without `meta.json` is not a pack (`l2l-pack` writes
it last).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from l2l_jax import storage, variants

from .fingerprint import FINGERPRINT_VERSION, Fingerprint, fingerprints, url_change, what_changed
from .index import (
    BadFileError,
    DatasetError,
    Variant,
    load_index,
    npy_header,
    object_info,
    one_line,
    open_regular,
    read_object,
)
from .validate import ScanResult, check_split

PACK_FORMAT = "l2l-pack"
PACK_VERSION = 2  # 2: sources.json records each source file's fingerprint (v1 packs cannot be checked)
SOURCES_FILE = "sources.json"
SHOW_CHANGED = 5  # how many changed source files a message names
_HAS_PREADV = hasattr(os, "preadv")
#: Ranges of one batch closer than this many bytes are read as one (a request costs about as much as this).
MERGE_GAP = 1 << 20

#: One video's read: (video, start row, stop row, step, destination per modality), as `read_into` takes it.
ReadRequest = tuple[int, int, int, int, Sequence[np.ndarray]]


class StalePackWarning(UserWarning):
    """A pack beside the pickle is not used (out of date or not verifiable); per-file features are read."""


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
    #: True where `read_many` reads a whole batch in fewer requests than `read_into` per video (a pack on a
    #: bucket); the loader then hands it each batch at once instead of reading rows on its threads.
    reads_whole_batch: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def read_into(self, i: int, start: int, stop: int, step: int, dests: Sequence[np.ndarray]) -> None:
        """Copy rows `[start:stop:step]` of video `i` into `dests` (one (n, width) view per modality)."""
        raise NotImplementedError

    def read_many(self, requests: Sequence[ReadRequest]) -> None:
        """`read_into` of each request (a source on a bucket reads them together)."""
        for i, start, stop, step, dests in requests:
            self.read_into(i, start, stop, step, dests)

    def read(self, i: int, start: int = 0, stop: int | None = None, step: int = 1) -> tuple[np.ndarray, ...]:
        """Rows `[start:stop:step]` of video `i`, one array per modality."""
        stop = int(self.lengths[i]) if stop is None else min(stop, int(self.lengths[i]))
        n = len(range(start, stop, step))
        outs = tuple(np.empty((n, self.width), self.dtype) for _ in self.keys)
        self.read_into(i, start, stop, step, outs)
        return outs

    def _scratch_buffer(self, nbytes: int) -> np.ndarray:
        """This thread's reusable bytes for reads that are converted or strided on the way to the batch (no
        fresh allocation per read, which left each reader thread's allocator holding memory)."""
        local = self.__dict__.setdefault("_scratch", threading.local())
        buf = getattr(local, "buf", None)
        if buf is None or buf.nbytes < nbytes:
            buf = local.buf = np.empty(nbytes, np.uint8)
        return buf[:nbytes]

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
        self.keys = variants.MODALITY_KEYS[self.variant]
        self.width = scan.width
        self.dtype = np.dtype(np.float32)
        self.labels = scan.index.labels
        self.ids = scan.index.ids
        self.lengths = np.asarray(scan.lengths, np.int64)
        self.names = [Path(t).stem for t in scan.index.templates]  # a URL's stem too
        self.fingerprints = dict(scan.fingerprints)  # as scanned; a pack records them for its sources
        self._headers: dict[str, tuple[int, tuple[int, ...], np.dtype, bool]] = {}

    def _header(self, path: str):
        h = self._headers.get(path)
        if h is None:
            try:
                h = npy_header(path)
            except BadFileError as e:
                raise BadFileError(path, f"{e.reason} (it was fine when the split was scanned; file changed?)") \
                    from None
            _, shape, dtype, _ = h
            if dtype.name not in ("float32", "float16") or len(shape) != 2 or shape[1] != self.width:
                raise DatasetError(f"{path}: now {dtype} {shape}, not what the validation scan saw; file changed?")
            self._headers[path] = h
        return h

    def read_into(self, i: int, start: int, stop: int, step: int, dests: Sequence[np.ndarray]) -> None:
        for path, dest in zip(self.index.paths[i], dests, strict=True):
            offset, shape, dtype, fortran = self._header(path)
            if storage.is_url(path):
                self._read_url(path, offset, shape, dtype, fortran, start, stop, step, dest)
                continue
            try:
                # open_regular stats the path first: a file replaced by a FIFO or device is never opened
                with open_regular(path, buffering=0) as f:
                    if fortran:
                        arr = np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape, order="F")
                        dest[...] = arr[start:stop:step]
                        del arr
                        continue
                    rows = stop - start
                    row_bytes = shape[1] * dtype.itemsize
                    direct = step == 1 and dtype == dest.dtype and dest.flags.c_contiguous
                    buf = dest if direct else self._scratch_buffer(rows * row_bytes).view(dtype).reshape(rows, shape[1])
                    f.seek(offset + start * row_bytes)
                    got = f.readinto(buf)
            except BadFileError as e:
                raise BadFileError(path, f"{e.reason} (it was fine when the split was scanned; file changed?)") \
                    from None
            except (OSError, ValueError) as e:
                raise DatasetError(f"{path}: cannot read ({type(e).__name__}: {e}); file changed?") from None
            if got != rows * row_bytes:
                raise DatasetError(f"{path}: short read ({got} of {rows * row_bytes} bytes); file changed?")
            if not direct:
                dest[...] = buf[::step]

    def _read_url(self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype, fortran: bool,
                  start: int, stop: int, step: int, dest: np.ndarray) -> None:
        """Rows `[start:stop:step]` of an object on a URL: one ranged read (the whole array when Fortran-ordered)."""
        rows, row_bytes = stop - start, shape[1] * dtype.itemsize
        if rows <= 0:
            return
        first, last = (0, shape[0] * row_bytes) if fortran else (start * row_bytes, stop * row_bytes)
        try:
            (data,) = storage.read_ranges(path, [(offset + first, offset + last)])
        except Exception as e:  # noqa: BLE001 - whatever the client raises, one line naming the URL
            raise DatasetError(f"{path}: cannot read ({one_line(e)}); file changed?") from None
        if fortran:
            dest[...] = np.frombuffer(data, dtype).reshape(shape, order="F")[start:stop:step]
        else:
            dest[...] = np.frombuffer(data, dtype).reshape(rows, shape[1])[::step]


class _ObjectArray:
    """The header facts of a pack's `.npy` object on a bucket (read with ranged reads, never mapped)."""

    def __init__(self, url: str, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.url, self.offset, self.shape, self.dtype = url, offset, shape, dtype
        self.ndim = len(shape)


def _merge_ranges(ranges: list[tuple[int, int]], gap: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Ranges closer than `gap` bytes merged: (merged ranges, which merged range holds each input range)."""
    order = sorted(range(len(ranges)), key=lambda j: ranges[j])
    merged: list[list[int]] = []
    where = [0] * len(ranges)
    for j in order:
        a, b = ranges[j]
        if merged and a <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
        where[j] = len(merged) - 1
    return [(a, b) for a, b in merged], where


class PackedSource(FeatureSource):
    """A split packed by `l2l-pack`: one memory-mapped (total_clips, width) array per modality plus offsets.
    Opening one checks its files' format; whether it still matches its sources is `stale_sources`."""

    kind = "packed"

    def __init__(self, pack_dir: str | os.PathLike):
        self.dir = storage.path(pack_dir)
        self.remote = storage.is_url(self.dir)
        self.reads_whole_batch = self.remote
        self.meta = read_pack_meta(self.dir)
        self.variant = self.meta["variant"]
        self.keys = tuple(self.meta["keys"])
        self.arrays = [_pack_array(self.dir / f"{k}.npy", mmap=True, kinds="f", ndim=2) for k in self.keys]
        self.offsets = _pack_array(self.dir / "offsets.npy", kinds="iu", ndim=1).astype(np.int64)
        self.labels = _pack_array(self.dir / "labels.npy", kinds="iu", ndim=1).astype(np.int64)
        self.ids = _pack_array(self.dir / "ids.npy", kinds="iu", ndim=1).astype(np.int64)
        self.lengths = np.diff(self.offsets)
        names_file = self.dir / "names.json"
        self.names = _pack_json(names_file) if names_file.exists() else [str(i) for i in self.ids]
        self.width = int(self.arrays[0].shape[1])
        self.dtype = self.arrays[0].dtype
        if (len(self.offsets) != len(self.labels) + 1 or len(self.ids) != len(self.labels)
                or not isinstance(self.names, list) or len(self.names) != len(self.labels)
                or self.offsets[0] != 0 or np.any(self.lengths < 0)
                or any(a.shape != self.arrays[0].shape or a.dtype != self.dtype for a in self.arrays)
                or self.offsets[-1] != self.arrays[0].shape[0]):
            raise DatasetError(f"{self.dir}: offsets, labels, ids, names and the packed arrays do not agree; "
                               "the pack is damaged: re-run l2l-pack")
        self._row_bytes = self.width * self.dtype.itemsize
        if self.remote:
            for a in self.arrays:
                try:
                    size = int(object_info(a.url)["size"])
                except BadFileError as e:
                    raise DatasetError(f"{e}; the pack is damaged: re-run l2l-pack") from None
                if size < a.offset + a.shape[0] * self._row_bytes:
                    raise DatasetError(f"{a.url}: object truncated ({size} bytes for {a.shape} {a.dtype}); the pack "
                                       "is damaged: re-run l2l-pack")
            return
        # reads go through the files (pread), not the memory maps: a mapping's touched pages count as the
        # process's resident memory (and the kernel maps far more than the rows read, about 12x measured),
        # so an epoch over a memory-mapped pack grew the resident set by the whole pack
        self._files = [open_regular(self.dir / f"{k}.npy", buffering=0) for k in self.keys]
        self._data_offsets = [int(a.offset) for a in self.arrays]

    def read_into(self, i: int, start: int, stop: int, step: int, dests: Sequence[np.ndarray]) -> None:
        if self.remote:
            self.read_many([(i, start, stop, step, dests)])
            return
        base = int(self.offsets[i])
        rows = stop - start
        if rows <= 0:
            return
        nbytes = rows * self._row_bytes
        for f, data, arr, dest in zip(self._files, self._data_offsets, self.arrays, dests, strict=True):
            pos = data + (base + start) * self._row_bytes
            direct = step == 1 and dest.dtype == self.dtype and dest.flags.c_contiguous
            if not _HAS_PREADV:  # no positioned reads on this platform: copy from the memory map
                dest[...] = arr[base + start : base + stop : step]
                continue
            buf = dest if direct else self._scratch_buffer(nbytes)
            got = os.preadv(f.fileno(), [buf], pos)
            if got != nbytes:
                raise DatasetError(f"{self.dir}: short read of video {i} ({got} of {nbytes} bytes); the pack is "
                                   "damaged: re-run l2l-pack")
            if not direct:
                dest[...] = buf[:nbytes].view(self.dtype).reshape(rows, self.width)[::step]

    def read_many(self, requests: Sequence[ReadRequest]) -> None:
        """`read_into` of every request; on a bucket one `storage.read_ranges` call per modality array, with
        every request's rows as one range (ranges closer than `MERGE_GAP` merged)."""
        if not self.remote:
            super().read_many(requests)
            return
        todo = [(int(self.offsets[i]) + start, stop - start, step, dests)
                for i, start, stop, step, dests in requests if stop > start]
        if not todo:
            return
        rb = self._row_bytes
        for k, arr in enumerate(self.arrays):
            ranges = [(arr.offset + first * rb, arr.offset + (first + rows) * rb) for first, rows, _, _ in todo]
            merged, where = _merge_ranges(ranges, MERGE_GAP)
            try:
                chunks = storage.read_ranges(arr.url, merged)
            except Exception as e:  # noqa: BLE001 - whatever the client raises, one line naming the URL
                raise DatasetError(f"{arr.url}: cannot read ({one_line(e)}); the pack is damaged or "
                                   "the storage does not answer") from None
            for (a, _), j, (_, rows, step, dests) in zip(ranges, where, todo, strict=True):
                lo = a - merged[j][0]
                rows_k = np.frombuffer(chunks[j], self.dtype, count=rows * self.width, offset=lo)
                dests[k][...] = rows_k.reshape(rows, self.width)[::step]


def _pack_array(path: storage.AnyPath, *, kinds: str, ndim: int, mmap: bool = False) -> np.ndarray | _ObjectArray:
    """One `.npy` of a pack (never unpickled; a non-regular file is not opened). On a bucket `mmap` gives the
    header's facts (`_ObjectArray`), else the object is read whole."""
    try:
        offset, shape, dtype, fortran = npy_header(path)  # a regular .npy file (np.load would try other formats)
        if dtype.hasobject:
            raise BadFileError(path, "an object array (pickled Python objects), refused without unpickling")
        if storage.is_url(path):
            if mmap:
                if fortran:
                    raise BadFileError(path, "Fortran-ordered, not what l2l-pack writes")
                arr = _ObjectArray(str(path), offset, shape, dtype)
            else:
                arr = np.load(io.BytesIO(read_object(path)), allow_pickle=False)
        else:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except BadFileError as e:
        raise DatasetError(f"{path}: {e.reason}; the pack is damaged: re-run l2l-pack") from None
    except Exception as e:  # noqa: BLE001 - any failure to load is a damaged pack
        raise DatasetError(f"{path}: cannot load ({type(e).__name__}: {e}); the pack is damaged: "
                           "re-run l2l-pack") from None
    if arr.dtype.kind not in kinds or arr.ndim != ndim:
        raise DatasetError(f"{path}: {arr.dtype} array of shape {arr.shape}, not what l2l-pack writes; the pack "
                           "is damaged: re-run l2l-pack")
    return arr


def _pack_json(path: storage.AnyPath) -> object:
    try:
        if storage.is_url(path):
            return json.loads(read_object(path))
        with open_regular(path) as f:
            return json.loads(f.read())
    except BadFileError as e:
        raise DatasetError(f"{path}: {e.reason}; the pack is damaged: re-run l2l-pack") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable ({type(e).__name__}: {e}); the pack is damaged: "
                           "re-run l2l-pack") from None


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a whole regular file or object on a URL (`BadFileError` for anything else)."""
    if storage.is_url(path):
        return hashlib.sha256(read_object(path)).hexdigest()
    h = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Unusable(Exception):
    """Why a pack cannot be used (a reason without the pack's name)."""


def _read_meta(pack_dir: storage.AnyPath) -> dict:
    try:
        meta = _pack_json(pack_dir / "meta.json")
    except DatasetError as e:
        raise _Unusable(f"not a packed split ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != PACK_FORMAT:
        raise _Unusable("not a packed split (meta.json is not an l2l-pack record)")
    version = meta.get("version")
    if type(version) is int and version < PACK_VERSION:
        raise _Unusable(f"packed by an older l2l-pack (format v{version}) that did not record its source files, "
                        "so it cannot be checked against them; re-run l2l-pack to rebuild it")
    if version != PACK_VERSION:
        raise _Unusable(f"unknown pack format {meta.get('format')} v{version}; re-run l2l-pack to rebuild it")
    variant = meta.get("variant")
    if variant not in variants.MODALITY_KEYS or meta.get("keys") != list(variants.MODALITY_KEYS[variant]):
        raise _Unusable(f"meta.json names variant {variant!r} with keys {meta.get('keys')!r}; the pack is "
                        "damaged: re-run l2l-pack")
    return meta


def read_pack_meta(pack_dir: str | os.PathLike) -> dict:
    """A pack's meta.json, checked: `DatasetError` for anything that is not a current-format pack (an older
    pack without source fingerprints cannot be verified and is refused with a message to re-run l2l-pack)."""
    try:
        return _read_meta(storage.path(pack_dir))
    except _Unusable as e:
        raise DatasetError(f"{pack_dir}: {e}") from None


def read_pack_sources(pack_dir: str | os.PathLike) -> dict[str, Fingerprint]:
    """The source feature files of a pack and their fingerprints as packed (`DatasetError` if unreadable)."""
    path = storage.path(pack_dir) / SOURCES_FILE
    data = _pack_json(path)
    try:
        if not isinstance(data, dict) or data.get("fingerprint") != FINGERPRINT_VERSION:
            raise ValueError("unknown fingerprint version")
        return {str(p): Fingerprint.from_json(fp) for p, fp in data["files"].items()}
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{path}: not a record of source fingerprints ({e}); re-run l2l-pack") from None


def write_pack_sources(pack_dir: str | os.PathLike, fingerprints: dict[str, Fingerprint]) -> None:
    """Record the pack's source files (absolute paths, or URLs) and their fingerprints."""
    files = {_abs(p): fp.to_json() for p, fp in sorted(fingerprints.items())}
    data = {"fingerprint": FINGERPRINT_VERSION, "files": files}
    if storage.is_url(pack_dir):
        storage.write_text(storage.path(pack_dir) / SOURCES_FILE, json.dumps(data))
        return
    (Path(pack_dir) / SOURCES_FILE).write_text(json.dumps(data))


def _abs(p: str | os.PathLike) -> str:
    """A local path made absolute; a URL as it is."""
    return str(storage.path(p)) if storage.is_url(p) else os.path.abspath(p)


def stale_sources(pack_dir: str | os.PathLike, *, num_threads: int = 8) -> str | None:
    """Why the pack no longer matches the feature files it was packed from (None: every one still has the size,
    mtime and content digest recorded at packing). Cheap: a stat per file, and a few small reads for files
    whose stat matches. Raises `DatasetError` if the record itself is unreadable."""
    sources = list(read_pack_sources(pack_dir).items())
    if not sources:
        return "it records no source files, so it cannot be checked; re-run l2l-pack to rebuild it"
    now = fingerprints([p for p, _ in sources if storage.is_url(p)], num_threads)  # a listing per folder

    def why(p: str, recorded: Fingerprint) -> str | None:
        if p not in now:
            return what_changed(p, recorded)
        return now[p] if isinstance(now[p], str) else url_change(now[p], recorded)

    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        whys = list(pool.map(lambda kv: why(*kv), sources))
    changed = [(p, why) for (p, _), why in zip(sources, whys, strict=True) if why is not None]
    if not changed:
        return None
    shown = "; ".join(f"{p}: {why}" for p, why in changed[:SHOW_CHANGED])
    more = f"; and {len(changed) - SHOW_CHANGED} more" if len(changed) > SHOW_CHANGED else ""
    return (f"{len(changed)} of {len(sources)} source feature file(s) changed since it was packed: "
            f"{shown}{more}")


def default_pack_dir(pickle_path: str | os.PathLike) -> storage.AnyPath:
    """Where `l2l-pack` puts a pickle's packed copy by default: `<dir>/<stem>.pack` (a URL beside a pickle on a
    bucket)."""
    p = storage.path(pickle_path) if storage.is_url(pickle_path) else Path(pickle_path)
    return p.parent / f"{p.stem}.pack"


def _root_key(feature_root) -> str | None:
    return None if feature_root is None else _abs(feature_root)


def pack_problem(pack_dir: str | os.PathLike, pickle_path: str | os.PathLike, variant: Variant,
                 feature_root) -> str | None:
    """Why `pack_dir` cannot stand for this pickle (None: it can): not a current-format pack, another
    variant or --feature_root, another pickle (by content), or source feature files changed since packing."""
    pack_dir = storage.path(pack_dir)
    try:
        meta = _read_meta(pack_dir)
    except _Unusable as e:
        return str(e)
    if meta.get("variant") != variant:
        return f"it holds the {meta.get('variant')!r} variant, not {variant!r}"
    if meta.get("feature_root") != _root_key(feature_root):
        def flag(root):
            return "without --feature_root" if root is None else f"with --feature_root {root}"
        return f"it was packed {flag(meta.get('feature_root'))}, not {flag(_root_key(feature_root))}"
    if meta.get("pickle_sha256") != file_sha256(pickle_path):
        return f"it was not packed from {pickle_path} as it is now (the pickle's content differs)"
    try:
        return stale_sources(pack_dir)
    except DatasetError as e:
        return str(e)


def repack_command(pickle_path: str | os.PathLike | None, variant: Variant, feature_root) -> str:
    """The `l2l-pack` command line that rebuilds the pack of a pickle."""
    cmd = f"l2l-pack {pickle_path if pickle_path else '<pickle>'}"
    if variant != variants.DEFAULT.name:
        cmd += f" --variant {variant}"
    if feature_root is not None:
        cmd += f" --feature_root {feature_root}"
    return cmd


def open_split(path: str | os.PathLike, *, variant: Variant = variants.DEFAULT.name, num_classes: int,
               feature_root: str | os.PathLike | None = None, width: int | None = 512,
               skip_bad_videos: bool = False, packed: bool | str | os.PathLike | None = None,
               cache: str | os.PathLike | bool | None = True, progress: bool = True) -> FeatureSource:
    """A split ready for the loader, from an upstream pickle or a pack directory.

    For a pickle, `packed=None` uses `<stem>.pack/` beside it when it is up to date (`pack_problem`: packed
    from the same pickle, variant and --feature_root, and its source feature files unchanged), else warns
    (`StalePackWarning`, naming the first changed files) and validates the per-file features (scan, cached);
    `packed=True` requires that pack (`DatasetError` when missing or out of date); `packed=False` forces
    per-file reading; a path names the pack directory to use, which must match its source files. Labels are
    checked against `num_classes`; the feature width against `width` (None: any, consistent).
    """
    path = storage.path(path)
    pack_dir: storage.AnyPath | None = None
    if path.is_dir() or packed not in (None, False, True):
        pack_dir = path if path.is_dir() else storage.path(packed)
        meta = read_pack_meta(pack_dir)
        why = stale_sources(pack_dir)
        if why is not None:
            raise DatasetError(f"{pack_dir}: {why}; the pack no longer matches the files it was packed from: "
                               f"re-run {repack_command(meta.get('pickle'), meta['variant'], meta.get('feature_root'))}"
                               " (or name the pickle to read the per-file features)")
    elif packed is not False:
        cand = default_pack_dir(path)
        if (cand / "meta.json").exists():
            why = pack_problem(cand, path, variant, feature_root)
            if why is None:
                pack_dir = cand
            elif packed is True:
                raise DatasetError(f"{cand} cannot be used for {path}: {why}; re-run "
                                   f"{repack_command(path, variant, feature_root)}")
            else:
                cmd = repack_command(path, variant, feature_root)
                warnings.warn(f"{cand} is out of date for {path} and is not used: {why}. Reading the per-file "
                              f"features instead; re-run {cmd} to refresh the pack",
                              StalePackWarning, stacklevel=2)
        elif packed is True:
            raise DatasetError(f"no packed copy at {cand}; run {repack_command(path, variant, feature_root)}")
    if pack_dir is not None:
        src = PackedSource(pack_dir)
        if src.variant != variant:
            raise DatasetError(f"{pack_dir} holds the {src.variant!r} variant, not {variant!r}")
        if width is not None and src.width != width:
            raise DatasetError(f"{pack_dir}: width {src.width}; expected {width}")
        try:
            src.check_labels(num_classes)
        except DatasetError as e:
            raise DatasetError(f"{pack_dir}: {e}") from None
        return src
    index = load_index(path, variant=variant, feature_root=feature_root)
    scan = check_split(index, num_classes=num_classes, width=width, skip_bad_videos=skip_bad_videos,
                       cache=cache, progress=progress)
    return FileSource(scan)
