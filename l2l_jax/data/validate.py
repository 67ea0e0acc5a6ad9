"""Validation scan of a split before anything is compiled.

Every feature file is opened once: it must exist, be a regular file (a FIFO, device, socket or directory is
reported and never opened), load without pickles (an object-dtype `.npy` is refused, never unpickled), be a
2-D float32/float16 array of the expected width with T >= 1 rows, all finite; image and audio lengths must
agree; labels must lie in [0, C). All problems are collected and reported together (file and reason).
Per-file facts are cached in a JSON file keyed by path and the file's fingerprint (size, mtime and a content
digest of its header and sampled blocks: `fingerprint.py`), so a second scan of unchanged files reads only a
few small blocks per file, and a file rewritten with its size and mtime restored is still scanned again.
After a clean scan no batch built from the split can make a jitted step fail.

Feature files on a URL (``gs://...``) are scanned the same way: each object is read whole in one request and
checked from memory (never memory-mapped), and keyed by its fingerprint from the storage's record (size,
generation, MD5: `fingerprint.py`). The cache may be a URL too (`cache="gs://.../scan.json"`): it is written
in one upload (`storage.write_bytes`), which a reader sees whole or not at all. The default cache stays on
the local disk, keyed by the pickle's URL.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from l2l_jax import storage

from .fingerprint import Fingerprint, fingerprint, fingerprints
from .index import (
    BadFileError,
    DatasetError,
    VideoIndex,
    npy_header,
    one_line,
    open_regular,
    parse_npy_header,
    read_object,
)

ALLOWED_DTYPES = ("float32", "float16")
CACHE_VERSION = 2  # 2: keyed by (size, mtime_ns, content digest)
OBJECT_ARRAY = ("an object array (pickled Python objects), refused without unpickling; feature files must "
                "hold plain float32/float16 arrays")


@dataclass(frozen=True)
class Problem:
    """One bad video: its position in the index, its id in the pickle, the offending file and why."""

    position: int
    id: int
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class ScanResult:
    """A checked split: `index` (bad videos removed when skipping), `lengths` (N,) clip counts of the kept
    videos, `width` of the features, every problem found (before skipping), and the fingerprint of every
    good file as it was when scanned (a pack records these for its sources)."""

    index: VideoIndex
    lengths: np.ndarray
    width: int
    problems: list[Problem]
    fingerprints: dict[str, Fingerprint] = field(default_factory=dict)

    def report(self) -> str:
        return format_problems(self.problems)


def format_problems(problems: list[Problem], source: str = "") -> str:
    """A readable multi-line list of problems (`source`: the dataset pickle they come from)."""
    head = f"{len(problems)} problem(s) in the dataset{f' {source}' if source else ''}:"
    return "\n".join([head] + [f"  [{p.id}] {p}" for p in problems])


def default_cache_dir() -> Path:
    """Where scan caches live: $L2L_CACHE_DIR or ~/.cache/l2l_jax/scan."""
    return Path(os.environ.get("L2L_CACHE_DIR", Path.home() / ".cache" / "l2l_jax")) / "scan"


def _cache_file_for(index: VideoIndex) -> Path:
    source = index.source if storage.is_url(index.source) else os.path.abspath(index.source)
    key = hashlib.sha1(f"{source}|{index.variant}".encode()).hexdigest()[:16]
    return default_cache_dir() / f"{key}.json"


def _read_cache(path: storage.AnyPath | None) -> dict:
    if path is None:
        return {}
    try:
        if storage.is_url(path):
            data = json.loads(read_object(path))  # a missing object is a BadFileError: no cache
        else:
            if not path.exists():
                return {}
            with open_regular(path) as f:
                data = json.loads(f.read())
    except (OSError, ValueError):  # BadFileError is a ValueError: a cache that is not a plain file is ignored
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _write_cache(path: storage.AnyPath | None, files: dict) -> None:
    if path is None:
        return
    if storage.is_url(path):  # one upload: readers see the old cache or the new one
        try:
            storage.write_text(path, json.dumps({"version": CACHE_VERSION, "files": files}))
        except Exception as e:  # noqa: BLE001 - whatever the client raises, one line naming the URL
            raise DatasetError(f"{path}: the validation scan's cache could not be written ({one_line(e)})") from None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": files}))
    os.replace(tmp, path)


def inspect_file(path: str) -> dict:
    """Facts about one .npy file: shape, dtype, whether every value is finite, or a load error.
    Only a regular file is opened; the header goes through `index.npy_header` (thread-safe); the data is
    memory-mapped, never unpickled. An object on a URL is read whole (one request) and checked in memory."""
    if storage.is_url(path):
        return _inspect_url(path)
    try:
        try:
            offset, shape, dtype, fortran = npy_header(path)
        except BadFileError as e:
            return {"error": e.reason}
        if dtype.hasobject:
            return {"error": f"cannot load ({OBJECT_ARRAY})"}
        info = {"shape": list(shape), "dtype": dtype.name}
        if dtype.kind != "f":
            return info
        size = math.prod(shape)
        with open_regular(path) as f:
            if os.fstat(f.fileno()).st_size < offset + size * dtype.itemsize:
                return {"error": f"cannot load (file truncated: {shape} {dtype.name} needs more bytes)"}
            if size == 0:
                info["finite"] = True
                return info
            arr = np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    except BadFileError as e:
        return {"error": e.reason}
    except Exception as e:  # noqa: BLE001 - any failure to load is reported, not raised
        return {"error": f"cannot load ({type(e).__name__}: {e})"}
    info["finite"] = _all_finite(arr, shape)
    del arr
    return info


def _all_finite(arr: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Whether every value of `arr` (of `shape`) is finite, checked in blocks of about 4 M values."""
    size = math.prod(shape)
    rows = shape[0] if len(shape) else 1
    flat = arr.reshape(rows, size // max(rows, 1)) if len(shape) else arr.reshape(1, 1)
    step = max(1, (1 << 22) // max(1, flat.shape[1]))
    return all(bool(np.isfinite(flat[s : s + step]).all()) for s in range(0, rows, step))


def _inspect_url(path: str) -> dict:
    """`inspect_file` of an object on a URL: read whole, header parsed as a literal, values checked in memory."""
    try:
        data = read_object(path)
        offset, shape, dtype, fortran = parse_npy_header(io.BytesIO(data), path)
        if dtype.hasobject:
            return {"error": f"cannot load ({OBJECT_ARRAY})"}
        info = {"shape": list(shape), "dtype": dtype.name}
        if dtype.kind != "f":
            return info
        size = math.prod(shape)
        if len(data) < offset + size * dtype.itemsize:
            return {"error": f"cannot load (object truncated: {shape} {dtype.name} needs more bytes)"}
        arr = np.frombuffer(data, dtype=dtype, count=size, offset=offset).reshape(shape, order="F" if fortran else "C")
    except BadFileError as e:
        return {"error": e.reason}
    except Exception as e:  # noqa: BLE001 - any failure to load is reported, not raised
        return {"error": f"cannot load ({type(e).__name__}: {e})"}
    info["finite"] = True if size == 0 else _all_finite(arr, shape)
    return info


def _fingerprint_or_problem(path: str) -> Fingerprint | str:
    """The file's fingerprint (the cache key), or why it cannot be read (missing, not a regular file...)."""
    try:
        return fingerprint(path)
    except BadFileError as e:
        return e.reason


def _file_problem(info: dict, width: int | None) -> str | None:
    if "error" in info:
        return info["error"]
    shape, dtype = tuple(info["shape"]), info["dtype"]
    if len(shape) != 2:
        return f"expected a 2-D array (clips, width), got shape {shape}"
    if dtype not in ALLOWED_DTYPES:
        return f"dtype {dtype}; expected float32 or float16"
    if width is not None and shape[1] != width:
        return f"width {shape[1]}; expected {width}"
    if shape[0] < 1:
        return "no clips (T = 0)"
    if not info.get("finite", False):
        return "non-finite values (NaN or inf)"
    return None


def scan(index: VideoIndex, *, num_classes: int, width: int | None = 512,
         cache: str | os.PathLike | bool | None = True, progress: bool = True,
         num_threads: int = 8) -> tuple[np.ndarray, int, list[Problem]]:
    """Check every video of `index`; return (lengths, width, problems), lengths -1 for bad videos.

    `width=None` accepts any width as long as all files agree (the most common one is expected).
    `cache`: True for the default location, a path, or False/None for no cache.
    """
    lengths, width, problems, _ = _scan(index, num_classes=num_classes, width=width, cache=cache,
                                        progress=progress, num_threads=num_threads)
    return lengths, width, problems


def _cached_info(entry: object, key: Fingerprint) -> dict | None:
    """The cached facts of a file if `entry` was recorded for this very fingerprint (else None)."""
    try:
        if Fingerprint.from_json(entry["key"]) == key and isinstance(entry["info"], dict) \
                and "error" not in entry["info"]:
            return entry["info"]
    except (TypeError, KeyError, ValueError):
        pass
    return None


def _scan(index: VideoIndex, *, num_classes: int, width: int | None, cache, progress: bool,
          num_threads: int) -> tuple[np.ndarray, int, list[Problem], dict[str, Fingerprint]]:
    cache_path = _cache_file_for(index) if cache is True else (storage.path(cache) if cache else None)
    cached = _read_cache(cache_path)
    files = sorted({p for paths in index.paths for p in paths})
    infos: dict[str, dict] = {}
    keys: dict[str, Fingerprint] = {}
    todo = []
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        # the fingerprint is taken before the file is inspected: a file changed in between is scanned again
        remote = fingerprints([p for p in files if storage.is_url(p)], num_threads)  # a listing per folder
        for p, key in zip(files, pool.map(lambda p: remote[p] if p in remote else _fingerprint_or_problem(p), files),
                          strict=True):
            if isinstance(key, str):
                infos[p] = {"error": key}
                continue
            keys[p] = key
            info = _cached_info(cached.get(p), key)
            if info is not None:
                infos[p] = info
            else:
                todo.append(p)
        if todo:
            results = pool.map(inspect_file, todo)
            for p, info in tqdm(zip(todo, results, strict=True), total=len(todo), desc="scanning features",
                                unit="file", disable=not progress, leave=False):
                infos[p] = info
    if todo:
        new_cache = {p: c for p, c in cached.items() if p not in infos}
        # files that failed to load are not cached: they are checked again on the next scan
        new_cache.update({p: {"key": keys[p].to_json(), "info": infos[p]} for p in files
                          if p in keys and "error" not in infos[p]})
        _write_cache(cache_path, new_cache)

    if width is None:
        widths = [tuple(i["shape"])[1] for i in infos.values() if len(i.get("shape", ())) == 2]
        width = int(np.bincount(widths).argmax()) if widths else 0

    problems: list[Problem] = []
    lengths = np.full(len(index), -1, dtype=np.int64)
    for pos, paths in enumerate(index.paths):
        vid = int(index.ids[pos])
        bad = False
        for p in paths:
            why = _file_problem(infos[p], width)
            if why is not None:
                problems.append(Problem(pos, vid, p, why))
                bad = True
        if not bad:
            ts = [infos[p]["shape"][0] for p in paths]
            if len(set(ts)) > 1:
                detail = ", ".join(f"{Path(p).parent.name} T={t}" for p, t in zip(paths, ts, strict=True))
                problems.append(Problem(pos, vid, paths[0], f"modality lengths differ ({detail})"))
                bad = True
        label = int(index.labels[pos])
        if not 0 <= label < num_classes:
            problems.append(Problem(pos, vid, index.templates[pos], f"label {label} not in [0, {num_classes})"))
            bad = True
        if not bad:
            lengths[pos] = infos[paths[0]]["shape"][0]
    good = {p: keys[p] for p in files if p in keys and _file_problem(infos[p], width) is None}
    return lengths, width, problems, good


def check_split(index: VideoIndex, *, num_classes: int, width: int | None = 512,
                skip_bad_videos: bool = False, cache: str | os.PathLike | bool | None = True,
                progress: bool = True) -> ScanResult:
    """Scan `index`; raise DatasetError listing every problem, or with `skip_bad_videos` drop them."""
    lengths, width, problems, fingerprints = _scan(index, num_classes=num_classes, width=width, cache=cache,
                                                   progress=progress, num_threads=8)
    if problems and not skip_bad_videos:
        raise DatasetError(format_problems(problems, index.source)
                           + "\n(use --skip_bad_videos to drop these videos)")
    keep = np.flatnonzero(lengths >= 0)
    if len(keep) < len(index):
        print(f"skip_bad_videos: dropped {len(index) - len(keep)} of {len(index)} videos "
              f"({len(problems)} problem(s)) from {index.source or 'the split'}")
        index = index.subset(keep)
        lengths = lengths[keep]
    if len(index) == 0:
        raise DatasetError(f"{index.source}: no usable videos")
    kept = {p for paths in index.paths for p in paths}
    return ScanResult(index, lengths, width, problems, {p: fp for p, fp in fingerprints.items() if p in kept})
