"""Upstream's dataset pickles, read safely, and the feature paths derived from them (docs/UPSTREAM.md §1).

A pickle holds `(feature_paths, labels)`: N path strings to each video's *imageAudio* feature file and N
integer labels. The imageAudio file itself is never read; its path is a template:
two-modality reads `image_features` and `audio_features`, the single variant `r2plus1d152_features`
(`str.replace` of every occurrence, as upstream does).

The pickle is read by a restricted unpickler that only builds what such a file holds (lists, tuples, str,
int, float, numpy integer scalars); any other global (e.g. `os.system` in a hostile reduce) is refused
before anything runs. Whatever goes wrong while reading a pickle (missing, not a regular file, empty,
truncated, garbage, a hostile global, a label too large for int64) is a `DatasetError` naming the file.

Feature files are opened only through `open_regular`, which checks `os.stat` first: a FIFO, device, socket
or directory in place of a `.npy` is reported ("not a regular file") and never opened, so nothing can hang
waiting on it.

A pickle, a --feature_root or a feature path may be a URL (``gs://bucket/...``): the pickle's bytes are read
through `l2l_jax.storage` and go through the same restricted unpickler; relative feature paths inside it
resolve against the pickle's URL folder; objects are read with `read_object` / `object_info` (whole or ranged
reads, nothing memory-mapped), whose failures are a `BadFileError` naming the URL.
"""

from __future__ import annotations

import io
import os
import pickle
import posixpath
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import numpy as np

from l2l_jax import storage, variants
from l2l_jax.errors import L2LError

Variant = str  # a --variant name (`l2l_jax.variants`)


class DatasetError(L2LError, ValueError):
    """A dataset file is malformed or unreadable (wrong structure, bad paths, bad labels, bad feature files,
    a bad or stale pack); the message names the file."""


class UnsafePickleError(DatasetError, pickle.UnpicklingError):
    """The pickle asks for something a dataset pickle never holds; nothing of it was run."""


class BadFileError(DatasetError):
    """One file cannot be used: missing, not a regular file, or unreadable. `path` and `reason` are kept
    apart so the validation scan can list the reason beside the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _not_regular(mode: int) -> str:
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return f"not a regular file ({kind}); expected a plain file, so it was not opened"


def stat_regular(path: str | os.PathLike) -> os.stat_result:
    """`os.stat(path)`, raising `BadFileError` unless `path` is a regular file (symlinks are followed)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadFileError(path, "missing file") from None
    except OSError as e:
        raise BadFileError(path, f"cannot stat ({e.strerror or e})") from None
    except ValueError as e:  # e.g. an embedded NUL byte
        raise BadFileError(path, f"invalid path ({e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadFileError(path, _not_regular(st.st_mode))
    return st


_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


def open_regular(path: str | os.PathLike, buffering: int = -1) -> io.BufferedReader | io.FileIO:
    """Open a regular file for binary reading; anything else is refused (`BadFileError`) without opening it.

    The type is checked with `os.stat` before opening and again with `fstat` after (the file is opened
    non-blocking, so even a FIFO swapped in between cannot hang the open)."""
    stat_regular(path)
    try:
        fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_BINARY)
    except OSError as e:
        raise BadFileError(path, f"cannot open ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadFileError(path, _not_regular(st.st_mode))
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def _url_fs(path: str | os.PathLike) -> tuple[object, str]:
    """(fsspec file system, key) of a URL."""
    return fsspec.core.url_to_fs(str(path))


def one_line(e: BaseException, limit: int = 240) -> str:
    """``Type: message`` of an exception on one line (a storage client's message may span many)."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _url_reason(path: str | os.PathLike, e: BaseException) -> str:
    """The one-line reason an object could not be read: missing (or its bucket missing), or the error."""
    if isinstance(e, FileNotFoundError):
        try:
            bucket = storage.url_problem(path)
        except Exception:  # noqa: BLE001 - the reason stays "missing object"
            bucket = None
        return bucket or "missing object"
    if isinstance(e, IsADirectoryError):
        return "a folder, not an object"
    return f"cannot read ({one_line(e)})"


def object_info(path: str | os.PathLike) -> dict:
    """The storage's record of the object at a URL (size, generation, md5Hash, ...); `BadFileError` when it is
    missing, its bucket is missing, it is a folder, or the storage does not answer."""
    try:
        fs, key = _url_fs(path)
        info = fs.info(key)
    except Exception as e:  # noqa: BLE001 - whatever the client raises, one line naming the URL
        raise BadFileError(path, _url_reason(path, e)) from None
    if info.get("type") != "file":
        raise BadFileError(path, "a folder, not an object")
    return info


def read_object(path: str | os.PathLike, start: int | None = None, stop: int | None = None) -> bytes:
    """The bytes of the object at a URL, all of it or `[start, stop)` (one request); `BadFileError` naming the
    URL when it cannot be read."""
    try:
        fs, key = _url_fs(path)
        return fs.cat_file(key, start, stop)
    except Exception as e:  # noqa: BLE001 - whatever the client raises, one line naming the URL
        raise BadFileError(path, _url_reason(path, e)) from None


def join_path(base: str | os.PathLike, rel: str) -> str:
    """`rel` resolved against the folder `base`: `os.path.join` locally; on a URL a normalised key (``..``
    and ``.`` removed, as an object name cannot hold them)."""
    base = str(base)
    if not storage.is_url(base):
        return os.path.join(base, rel)
    scheme, rest = base.split("://", 1)
    bucket, _, key = rest.partition("/")
    joined = posixpath.normpath(posixpath.join("/", key, rel)).lstrip("/")
    return f"{scheme}://{bucket}/{joined}"


def _safe_dtype(spec, align=False, copy=True):
    if not isinstance(spec, str):
        raise UnsafePickleError(f"numpy.dtype({spec!r}) refused: only integer dtype strings are allowed")
    dt = np.dtype(spec)
    if dt.kind not in "iu":
        raise UnsafePickleError(f"numpy.dtype({spec!r}) refused: only integer dtypes are allowed")
    return np.dtype(spec, bool(align), bool(copy))


def _safe_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "iu":
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} refused: only integer scalars are allowed")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafePickleError("numpy scalar refused: malformed payload")
    return int(np.frombuffer(data, dtype=dtype)[0])


def _safe_encode(text, encoding="utf-8", errors="strict"):
    # protocol-2 pickles rebuild bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode refused: only latin1 text -> bytes is allowed")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
    ("_codecs", "encode"): _safe_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: a dataset pickle holds only lists/tuples of "
                "str and int (and numpy integer scalars)"
            )
        return fn

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing persistent id in dataset pickle")


def safe_load_pickle(data: bytes, source: str = "") -> object:
    """Unpickle `data` allowing only plain containers, str, int, float and numpy integer scalars.

    A refused global is an `UnsafePickleError`; any other failure (empty, truncated or garbage data) a
    `DatasetError`; both name `source` (the file) when given."""
    where = f"{source}: " if source else ""
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{where}unsafe dataset pickle, refused without running it: {e}") from None
    except RecursionError:
        raise DatasetError(f"{where}not a readable dataset pickle (nested too deeply)") from None
    except Exception as e:  # noqa: BLE001 - anything the unpickler trips over means a damaged file
        what = "empty file" if not data else f"{type(e).__name__}: {e}"
        raise DatasetError(f"{where}not a readable dataset pickle ({what}); expected upstream's pickled "
                           "(feature_paths, labels); recreate or re-download it") from None


def remap_root(path: str, feature_root: str | os.PathLike | None) -> str:
    """Replace everything before `imageAudio_features` in `path` with `feature_root` (None: unchanged)."""
    if feature_root is None:
        return path
    pos = path.find(variants.TEMPLATE_DIR)
    if pos < 0:
        raise DatasetError(f"path {path!r} has no '{variants.TEMPLATE_DIR}' component to remap with --feature_root")
    root = str(feature_root) if storage.is_url(feature_root) else os.fspath(feature_root)
    return join_path(root, path[pos:])


def modality_paths(template: str, variant: Variant) -> tuple[str, ...]:
    """The feature files upstream reads for one video: (image, audio) or (r2plus1d152,)."""
    return tuple(template.replace(variants.TEMPLATE_DIR, d) for d in variants.get(variant).feature_dirs)


@dataclass
class VideoIndex:
    """The videos of one split: template paths (after remap), labels, ids (row in the pickle), and the
    per-modality feature paths. `ids` survive filtering so batches report the pickle's own index."""

    variant: Variant
    templates: list[str]
    labels: np.ndarray  # (N,) int64
    ids: np.ndarray  # (N,) int64
    source: str = ""
    paths: list[tuple[str, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.ids = np.asarray(self.ids, dtype=np.int64)
        if not (len(self.templates) == len(self.labels) == len(self.ids)):
            raise DatasetError("templates, labels and ids differ in length")
        self.paths = [modality_paths(t, self.variant) for t in self.templates]

    def __len__(self) -> int:
        return len(self.templates)

    def subset(self, keep: np.ndarray | list[int]) -> VideoIndex:
        """The videos at positions `keep` (ids kept)."""
        keep = np.asarray(keep, dtype=np.int64)
        return VideoIndex(
            self.variant, [self.templates[i] for i in keep], self.labels[keep], self.ids[keep], self.source
        )


_INT64 = np.iinfo(np.int64)


def _as_label(x: object, i: int, source: str) -> int:
    if isinstance(x, bool):
        raise DatasetError(f"{source}: label {i} is a bool ({x!r}), expected an int")
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if isinstance(x, int):
        if not _INT64.min <= x <= _INT64.max:
            raise DatasetError(f"{source}: label {i} is {x}, too large for a class index (expected an int in "
                               "[0, num_classes))")
        return x
    shown = repr(x) if len(repr(x)) <= 80 else repr(x)[:77] + "..."
    raise DatasetError(f"{source}: label {i} is {shown} ({type(x).__name__}), expected an int")


def parse_index(obj: object, *, variant: Variant = variants.DEFAULT.name, feature_root=None, base_dir=None,
                source: str = "") -> VideoIndex:
    """Check the `(feature_paths, labels)` structure and build a VideoIndex.

    Relative paths are resolved against `base_dir` (the pickle's directory) unless `feature_root` is set.
    """
    variants.get(variant)  # a ValueError for an unknown variant
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        raise DatasetError(f"{source}: expected a pair (feature_paths, labels), got {type(obj).__name__}")
    paths, labels = obj
    if not isinstance(paths, list | tuple) or not isinstance(labels, list | tuple):
        raise DatasetError(f"{source}: feature_paths and labels must be lists")
    if len(paths) != len(labels):
        raise DatasetError(f"{source}: {len(paths)} paths but {len(labels)} labels")
    templates = []
    for i, p in enumerate(paths):
        if not isinstance(p, str):
            raise DatasetError(f"{source}: path {i} is {type(p).__name__}, expected str")
        if "\x00" in p:
            raise DatasetError(f"{source}: path {i} ({p!r}) contains a NUL character")
        if variants.TEMPLATE_DIR not in p:
            raise DatasetError(f"{source}: path {i} ({p!r}) has no '{variants.TEMPLATE_DIR}' component")
        p = remap_root(p, feature_root)
        if not (os.path.isabs(p) or storage.is_url(p)) and base_dir is not None:
            p = join_path(base_dir, p)
        templates.append(p)
    labs = [_as_label(x, i, source) for i, x in enumerate(labels)]
    return VideoIndex(variant, templates, np.array(labs, np.int64), np.arange(len(labs)), source)


def load_index(pickle_path: str | os.PathLike, *, variant: Variant = variants.DEFAULT.name,
               feature_root: str | os.PathLike | None = None) -> VideoIndex:
    """Read an upstream dataset pickle safely; remap its prefix with `feature_root` (--feature_root).

    Relative paths in the pickle (our synthetic set writes them) are taken relative to the pickle's folder (its
    URL folder for a pickle on a bucket, whose bytes are read through `l2l_jax.storage`).
    Any problem with the file is a `DatasetError` naming it (`UnsafePickleError` for a refused global).
    """
    if storage.is_url(pickle_path):
        url = str(storage.path(pickle_path))
        try:
            object_info(url)  # a folder in its place is named as such
            data = read_object(url)
        except BadFileError as e:
            raise BadFileError(url, f"cannot read the dataset pickle: {e.reason}") from None
        obj = safe_load_pickle(data, source=url)
        return parse_index(obj, variant=variant, feature_root=feature_root, base_dir=url.rsplit("/", 1)[0],
                           source=url)
    pickle_path = Path(pickle_path)
    try:
        with open_regular(pickle_path) as f:
            data = f.read()
    except BadFileError as e:
        raise BadFileError(pickle_path, f"cannot read the dataset pickle: {e.reason}") from None
    except OSError as e:
        raise BadFileError(pickle_path, f"cannot read the dataset pickle ({e.strerror or e})") from None
    obj = safe_load_pickle(data, source=str(pickle_path))
    return parse_index(obj, variant=variant, feature_root=feature_root, base_dir=pickle_path.parent,
                       source=str(pickle_path))


def write_index(pickle_path: str | os.PathLike, feature_paths: list[str], labels: list[int]) -> None:
    """Write `(feature_paths, labels)` as upstream does (a pickled tuple of two lists); a URL is one upload."""
    if storage.is_url(pickle_path):
        storage.write_bytes(pickle_path, pickle.dumps((list(feature_paths), [int(x) for x in labels]), protocol=2))
        return
    with open(pickle_path, "wb") as f:
        pickle.dump((list(feature_paths), [int(x) for x in labels]), f, protocol=2)


_HEADER_LOCK = threading.Lock()


def npy_header(path: str) -> tuple[int, tuple[int, ...], np.dtype, bool]:
    """(data offset, shape, dtype, fortran_order) of a `.npy` file, parsed without loading it.

    numpy parses headers with `ast.literal_eval`, which CPython 3.11 can fail spuriously when threads run it
    at once (SystemError "AST constructor recursion depth mismatch"), so parsing is serialised here; every
    threaded reader of this package goes through this function. Only a regular file is opened
    (`open_regular`); any problem is a `BadFileError` ("not a .npy file", "unreadable .npy header ...").
    The header is parsed as a literal, so an object dtype is only reported, never unpickled.
    A URL's header is read with one ranged read of its first `URL_HEAD_BYTES` (a second one if it is longer).
    """
    if storage.is_url(path):
        head = read_object(path, 0, URL_HEAD_BYTES)
        need = _npy_header_end(head)
        if need is not None and need > len(head):
            head = read_object(path, 0, need)
        return parse_npy_header(io.BytesIO(head), path)
    with open_regular(path) as f:
        return parse_npy_header(f, path)


URL_HEAD_BYTES = 4096


def _npy_header_end(head: bytes) -> int | None:
    """Where the data of a `.npy` starts, from its first bytes (None: not a .npy, or too short to say)."""
    if head[:6] != b"\x93NUMPY" or len(head) < 12:
        return None
    if head[6] == 1:
        return 10 + int.from_bytes(head[8:10], "little")
    return 12 + int.from_bytes(head[8:12], "little")


def parse_npy_header(f, path: str | os.PathLike) -> tuple[int, tuple[int, ...], np.dtype, bool]:
    """`npy_header` of an open binary file (at its start) or a `BytesIO` of a URL's first bytes."""
    if f.read(6) != b"\x93NUMPY":
        raise BadFileError(path, "not a .npy file")
    f.seek(0)
    try:
        with _HEADER_LOCK:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, TypeError, OSError, SyntaxError, MemoryError, RecursionError) as e:
        raise BadFileError(path, f"unreadable .npy header ({type(e).__name__}: {e})") from None
    return f.tell(), tuple(shape), dtype, bool(fortran)
