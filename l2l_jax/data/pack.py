"""Packing a split: its per-video `.npy` files -> one memory-mapped array per modality plus offsets (the library of
`l2l-pack`, whose program is `l2l_jax.programs.pack`).

Layout of `<out>/` (default `<pickle dir>/<stem>.pack/`, where the loader finds it on its own):
`meta.json`, `offsets.npy` (N+1,) int64 (video i is rows offsets[i]:offsets[i+1]), `labels.npy`, `ids.npy`
(row in the pickle), `names.json` (video names), and `image.npy`/`audio.npy` (two-modality) or `features.npy`
(single), each (total_clips, width) float32, or float16 with `--float16` (half the bytes; values must fit in float16).
`sources.json` records every source feature file (absolute path) with the fingerprint it had when the split
was validated (size, mtime, content digest: `fingerprint.py`); a pack whose sources changed since is not used
(`source.open_split`). The split is validated first, so a pack never holds a bad video (bad ones are refused,
or dropped with `--skip_bad_videos`). Format v2 (v1 packs, without `sources.json`, are not used: re-run
l2l-pack).

A pack may go to a bucket (``--out gs://...``, or beside a pickle on one). There is no memory map and no
rename there: the pack is built in a local temporary folder exactly as a local one, then each file is uploaded
(`meta.json` removed first from any pack it replaces, and uploaded LAST): a folder without `meta.json` is not a
pack, so a half-written pack on a bucket is never taken for one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import fsspec
import numpy as np
from tqdm.auto import tqdm

from l2l_jax import storage, variants

from .fingerprint import fingerprint
from .index import DatasetError, Variant, load_index, one_line
from .source import (
    PACK_FORMAT,
    PACK_VERSION,
    FileSource,
    _abs,
    _root_key,
    default_pack_dir,
    file_sha256,
    write_pack_sources,
)
from .validate import check_split

F16_MAX = float(np.finfo(np.float16).max)


def write_pack(source: FileSource, out_dir: str | os.PathLike, *, float16: bool = False,
               pickle_path: str | os.PathLike | None = None, feature_root: str | os.PathLike | None = None,
               progress: bool = True) -> storage.AnyPath:
    """Pack a validated per-file split into `out_dir` (written to a temporary folder, then renamed; on a bucket
    built locally, then uploaded with `meta.json` last).

    The source files are recorded with the fingerprints the validation scan saw (`source.fingerprints`;
    taken now for any it lacks), so a file changed after it was validated makes the pack stale at once."""
    if storage.is_url(out_dir):
        url = storage.path(out_dir)
        with tempfile.TemporaryDirectory(prefix="l2l-pack-") as work:
            built = _build(source, Path(work) / url.name, url.name, float16=float16, pickle_path=pickle_path,
                           feature_root=feature_root, progress=progress)
            upload_pack(built, url)
        return url
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    _build(source, tmp, out_dir.name, float16=float16, pickle_path=pickle_path, feature_root=feature_root,
           progress=progress)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def upload_pack(folder: Path, url: storage.AnyPath) -> None:
    """Upload the pack built in `folder` to `url`, replacing any pack there: its `meta.json` is removed first
    and the new one uploaded last, so no reader takes a half-replaced pack for a pack. A failed upload is a
    `DatasetError` naming the URL."""
    fs, key = fsspec.core.url_to_fs(str(url))
    try:
        if fs.exists(f"{key}/meta.json"):
            fs.rm_file(f"{key}/meta.json")
        storage.remove_tree(url)
        names = sorted(p.name for p in folder.iterdir() if p.name != "meta.json") + ["meta.json"]
        for name in names:
            fs.put_file(str(folder / name), f"{key}/{name}")
    except Exception as e:  # noqa: BLE001 - whatever the client raises, one line naming the URL
        raise DatasetError(f"{url}: the pack could not be written ({one_line(e)}); it is not used "
                           "(no meta.json); run l2l-pack again") from None


def _build(source: FileSource, tmp: Path, name: str, *, float16: bool, pickle_path, feature_root,
           progress: bool) -> Path:
    """Write the pack's files into the new local folder `tmp` (`name`: the pack's, for the progress bar)."""
    sources = {p: source.fingerprints.get(p) or fingerprint(p) for paths in source.index.paths for p in paths}
    tmp.mkdir(parents=True)
    dtype = np.float16 if float16 else np.float32
    offsets = np.zeros(len(source) + 1, np.int64)
    offsets[1:] = np.cumsum(source.lengths)
    total = int(offsets[-1])
    arrays = [np.lib.format.open_memmap(tmp / f"{k}.npy", mode="w+", dtype=dtype, shape=(total, source.width))
              for k in source.keys]
    overflow = []
    for i in tqdm(range(len(source)), desc=f"packing {name}", unit="video", disable=not progress):
        parts = source.read(i)  # float32
        for arr, part in zip(arrays, parts, strict=True):
            peak = float(np.abs(part).max()) if float16 and part.size else 0.0
            if peak > F16_MAX:
                overflow.append(f"  [{int(source.ids[i])}] {source.index.templates[i]}: |x| up to "
                                f"{peak:.4g} overflows float16")
                continue
            arr[offsets[i] : offsets[i + 1]] = part
    for arr in arrays:
        arr.flush()
    del arrays
    if overflow:
        shutil.rmtree(tmp)
        raise DatasetError("cannot pack as float16:\n" + "\n".join(overflow) + "\n(pack without --float16)")
    np.save(tmp / "offsets.npy", offsets)
    np.save(tmp / "labels.npy", source.labels.astype(np.int64))
    np.save(tmp / "ids.npy", source.ids.astype(np.int64))
    (tmp / "names.json").write_text(json.dumps(list(source.names)))
    write_pack_sources(tmp, sources)
    meta = {
        "format": PACK_FORMAT, "version": PACK_VERSION, "variant": source.variant, "keys": list(source.keys),
        "width": source.width, "dtype": np.dtype(dtype).name, "num_videos": len(source), "total_clips": total,
        "pickle": None if pickle_path is None else _abs(pickle_path),
        "pickle_sha256": None if pickle_path is None else file_sha256(pickle_path),
        "feature_root": _root_key(feature_root), "num_sources": len(sources),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return tmp


def pack_pickle(pickle_path: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                variant: Variant = variants.DEFAULT.name, feature_root: str | os.PathLike | None = None,
                num_classes: int | None = None, width: int | None = 512, float16: bool = False,
                skip_bad_videos: bool = False, progress: bool = True) -> storage.AnyPath:
    """Validate and pack the split of an upstream pickle; returns the pack directory."""
    index = load_index(pickle_path, variant=variant, feature_root=feature_root)
    if num_classes is None:
        num_classes = int(index.labels.max()) + 1 if len(index) else 1
    scan = check_split(index, num_classes=num_classes, width=width, skip_bad_videos=skip_bad_videos,
                       progress=progress)
    out = default_pack_dir(pickle_path) if out_dir is None else storage.path(out_dir)
    return write_pack(FileSource(scan), out, float16=float16, pickle_path=pickle_path,
                      feature_root=feature_root, progress=progress)
