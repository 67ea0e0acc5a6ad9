"""Validation scan of a split before anything is compiled.

Every feature file is opened once: it must exist, load without pickles, be a 2-D float32/float16 array of the
expected width with T >= 1 rows, all finite; image and audio lengths must agree; labels must lie in [0, C).
All problems are collected and reported together (file and reason). Per-file facts are cached by
(path, size, mtime) in a JSON file, so a second scan of unchanged files reads nothing.
After a clean scan no batch built from the split can make a jitted step fail.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .index import DatasetError, VideoIndex, npy_header

ALLOWED_DTYPES = ("float32", "float16")
CACHE_VERSION = 1


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
    videos, `width` of the features, and every problem found (before skipping)."""

    index: VideoIndex
    lengths: np.ndarray
    width: int
    problems: list[Problem]

    def report(self) -> str:
        return format_problems(self.problems)


def format_problems(problems: list[Problem]) -> str:
    """A readable multi-line list of problems."""
    head = f"{len(problems)} problem(s) in the dataset:"
    return "\n".join([head] + [f"  [{p.id}] {p}" for p in problems])


def default_cache_dir() -> Path:
    """Where scan caches live: $L2L_CACHE_DIR or ~/.cache/l2l_jax/scan."""
    return Path(os.environ.get("L2L_CACHE_DIR", Path.home() / ".cache" / "l2l_jax")) / "scan"


def _cache_file_for(index: VideoIndex) -> Path:
    key = hashlib.sha1(f"{os.path.abspath(index.source)}|{index.variant}".encode()).hexdigest()[:16]
    return default_cache_dir() / f"{key}.json"


def _read_cache(path: Path | None) -> dict:
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if data.get("version") != CACHE_VERSION:
        return {}
    return data.get("files", {})


def _write_cache(path: Path | None, files: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": files}))
    os.replace(tmp, path)


def inspect_file(path: str) -> dict:
    """Facts about one .npy file: shape, dtype, whether every value is finite, or a load error.
    The header goes through `index.npy_header` (thread-safe); the data is memory-mapped, never unpickled."""
    try:
        try:
            offset, shape, dtype, fortran = npy_header(path)
        except ValueError as e:
            if str(e) == "not a .npy file":
                return {"error": "not a .npy file"}
            raise
        if dtype.hasobject:
            return {"error": "cannot load (an object array: pickled data is refused)"}
        info = {"shape": list(shape), "dtype": dtype.name}
        if dtype.kind != "f":
            return info
        size = int(np.prod(shape, dtype=np.int64))
        if os.path.getsize(path) < offset + size * dtype.itemsize:
            return {"error": f"cannot load (file truncated: {shape} {dtype.name} needs more bytes)"}
        if size == 0:
            info["finite"] = True
            return info
        arr = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    except Exception as e:  # noqa: BLE001 - any failure to load is reported, not raised
        return {"error": f"cannot load ({type(e).__name__}: {e})"}
    rows = shape[0] if len(shape) else 1
    flat = arr.reshape(rows, size // max(rows, 1)) if len(shape) else arr.reshape(1, 1)
    step = max(1, (1 << 22) // max(1, flat.shape[1]))
    info["finite"] = all(bool(np.isfinite(flat[s : s + step]).all()) for s in range(0, rows, step))
    del arr, flat
    return info


def _stat_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


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
    cache_path = _cache_file_for(index) if cache is True else (Path(cache) if cache else None)
    cached = _read_cache(cache_path)
    files = sorted({p for paths in index.paths for p in paths})
    keys = {p: _stat_key(p) for p in files}
    infos: dict[str, dict] = {}
    todo = []
    for p in files:
        k = keys[p]
        if k is None:
            infos[p] = {"error": "missing file"}
            continue
        c = cached.get(p)
        if c is not None and tuple(c["key"]) == k and "error" not in c["info"]:
            infos[p] = c["info"]
        else:
            todo.append(p)
    if todo:
        with ThreadPoolExecutor(max_workers=num_threads) as pool:
            results = pool.map(inspect_file, todo)
            for p, info in tqdm(zip(todo, results, strict=True), total=len(todo), desc="scanning features",
                                unit="file", disable=not progress, leave=False):
                infos[p] = info
        new_cache = {p: c for p, c in cached.items() if p not in infos}
        # files that failed to load are not cached: they are checked again on the next scan
        new_cache.update({p: {"key": list(keys[p]), "info": infos[p]} for p in files
                          if keys[p] is not None and "error" not in infos[p]})
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
    return lengths, width, problems


def check_split(index: VideoIndex, *, num_classes: int, width: int | None = 512,
                skip_bad_videos: bool = False, cache: str | os.PathLike | bool | None = True,
                progress: bool = True) -> ScanResult:
    """Scan `index`; raise DatasetError listing every problem, or with `skip_bad_videos` drop them."""
    lengths, width, problems = scan(index, num_classes=num_classes, width=width, cache=cache,
                                    progress=progress)
    if problems and not skip_bad_videos:
        raise DatasetError(format_problems(problems) + "\n(use --skip_bad_videos to drop these videos)")
    keep = np.flatnonzero(lengths >= 0)
    if len(keep) < len(index):
        print(f"skip_bad_videos: dropped {len(index) - len(keep)} of {len(index)} videos "
              f"({len(problems)} problem(s)) from {index.source or 'the split'}")
        index = index.subset(keep)
        lengths = lengths[keep]
    if len(index) == 0:
        raise DatasetError(f"{index.source}: no usable videos")
    return ScanResult(index, lengths, width, problems)
