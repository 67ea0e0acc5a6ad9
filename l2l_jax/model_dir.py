"""The converted-model directory: Flax variables + metadata, written atomically.

Format (``format_version`` 1)::

    DIR/
      meta.json    {"format": "l2l-jax-model", "format_version": 1, "variant": <a `l2l_jax.variants.MODEL_KINDS`
                    name: a policy variant or the fusion net + classifier>,
                    "num_classes": C, "feature_dim": D, "source": "<where the weights came from>",
                    "tensors_sha256": "<`l2l_jax.integrity.tensor_checksum` of the variables>", ...extras}
      variables/   an orbax PyTree checkpoint of {"params": ..., "batch_stats": ...} (plain nested dicts of numpy
                   arrays: float32 tensors, int32 0-d BatchNorm counters; names as in docs/DESIGN.md;
                   the fusion net + classifier, `variants.IMAGEAUDIONET`, has no "batch_stats")

``feature_dim`` is 512 for the two-modality model and the fusion net, D for the single variant. Extra
JSON values in ``meta`` are kept: ``l2l-convert`` adds ``epoch`` and ``upstream_args`` (the source checkpoint's
flags, JSON-able ones only) when the ``.pth`` has them; ``source`` is the absolute path it was converted from.

`save_model_dir` writes everything into a temporary sibling
directory and renames it into place, so a reader never sees a half-written model; it replaces an existing
directory only when asked and only if that directory is itself a model directory. On a bucket (a ``gs://``
URL; there is no rename there) ``meta.json`` is written last and a reader refuses a folder without it: a new
model is written in place, a replaced one into a fresh sibling prefix first, then the old folder is removed
and the new one copied over, ``meta.json`` last (an interrupted write leaves a folder without ``meta.json``,
which is refused by name and which ``--overwrite`` may replace). It is a one-process writer:
in a multi-process run the calling process alone writes it (orbax's barriers are confined to that process).
`load_model_dir` returns numpy arrays, bit for bit what was saved: it recomputes the checksum (a ``meta.json``
without one is refused: the tensors could not be verified), and refuses non-finite tensors, a
``meta.json`` that lacks a field or whose variant, classes or width do not match the tensors, each with a
`NotAModelDirError` (a `l2l_jax.errors.WeightsError`) naming the directory. Training runs (optimizer state,
CheckpointManager) are not this format.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from l2l_jax import storage, torch_names, variants
from l2l_jax.errors import WeightsError
from l2l_jax.integrity import leaf_names, nonfinite_tensors, tensor_checksum

FORMAT = "l2l-jax-model"
FORMAT_VERSION = 1
META_FILE = "meta.json"
VARIABLES_DIR = "variables"


class NotAModelDirError(WeightsError):
    """The path is not a readable, intact converted-model directory of this format."""


def _check_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(meta)
    missing = [k for k in ("variant", "num_classes", "feature_dim", "source") if k not in out]
    if missing:
        raise WeightsError(f"model metadata lacks {missing}")
    if out["variant"] not in variants.MODEL_KINDS:
        raise WeightsError(f"unknown variant {out['variant']!r}; expected one of {variants.MODEL_KINDS}")
    for key in ("num_classes", "feature_dim"):
        if not isinstance(out[key], int | np.integer) or int(out[key]) < 1:
            raise WeightsError(f"meta {key} must be a positive integer, got {out[key]!r}")
        out[key] = int(out[key])
    out["format"], out["format_version"] = FORMAT, FORMAT_VERSION
    json.dumps(out)  # fail early on values JSON cannot hold
    return out


def _check_variables(variables: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    try:
        bias = variables["params"]["net_classifier"]["classifier"]["bias"]
        kernel = variables["params"]["net_classifier"]["classifier"]["kernel"]
    except (KeyError, TypeError) as e:
        raise WeightsError(f"variables have no params/net_classifier/classifier ({e!r})") from None
    want = (variants.model_width(meta["variant"], meta["feature_dim"]), meta["num_classes"])
    if tuple(np.shape(kernel)) != want or tuple(np.shape(bias)) != want[1:]:
        raise WeightsError(f"the classifier is {tuple(np.shape(kernel))}, but meta.json says num_classes "
                           f"{meta['num_classes']} and feature_dim {meta['feature_dim']} (expected {want})")
    expected = set(torch_names.flax_paths(meta["variant"]))
    have = set(leaf_names(variables))
    if have != expected:
        lacking, extra = sorted(expected - have), sorted(have - expected)
        raise WeightsError(f"the tensors are not those of a {meta['variant']!r} model, as meta.json says: "
                           f"missing {lacking[:4]}{'...' if len(lacking) > 4 else ''}, "
                           f"unexpected {extra[:4]}{'...' if len(extra) > 4 else ''}")
    bad = nonfinite_tensors(variables)
    if bad:
        raise WeightsError(f"non-finite values (NaN or inf) in {bad[:5]}{'...' if len(bad) > 5 else ''}")


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a converted-model directory (meta.json of this format + variables/)."""
    p = storage.path(path)
    storage.forget_listings(p)
    try:
        meta = json.loads((p / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT and (p / VARIABLES_DIR).is_dir()


def is_interrupted_write(path: str | os.PathLike) -> bool:
    """Whether a bucket folder is what an interrupted `save_model_dir` leaves there: ``variables/`` and nothing
    else (no ``meta.json``), so ``--overwrite`` may replace it. Always False for a local path (a local write
    never leaves its target half-written)."""
    p = storage.path(path)
    if not storage.is_url(p):
        return False
    storage.forget_listings(p)
    try:
        names = {q.name for q in p.iterdir()}
    except OSError:
        return False
    return names == {VARIABLES_DIR}


def _save_variables(where: storage.AnyPath, variables: Mapping[str, Any]) -> None:
    """The orbax checkpoint of `variables` at `where` (written by this process alone)."""
    # this process only: orbax's default checkpointer would wait at barriers for every process of the run
    me = jax.process_index()
    solo = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me},
                                              barrier_sync_key_prefix=f"model_dir_{uuid.uuid4().hex[:8]}")
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=solo),
                          multiprocessing_options=solo) as ckptr:
        ckptr.save(where, args=ocp.args.PyTreeSave(_to_numpy(dict(variables))))


def _save_variables_url(where: storage.AnyPath, variables: Mapping[str, Any]) -> None:
    """`_save_variables` on a bucket; TensorStore's failures (a refused or failed upload), which orbax passes on
    as `ValueError`, become the `OSError` any other failed write is (`l2l_jax.outputs.writing`: one line)."""
    try:
        _save_variables(where, variables)
    except ValueError as e:
        raise OSError(f"{where}: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from e


def _meta_text(meta: Mapping[str, Any]) -> str:
    return json.dumps(meta, indent=1, sort_keys=True) + "\n"


def save_model_dir(path: str | os.PathLike, variables: Mapping[str, Any], meta: Mapping[str, Any], *,
                   overwrite: bool = False) -> storage.AnyPath:
    """Writes ``variables`` and ``meta`` as a model directory at ``path`` (atomically locally; on a bucket
    ``meta.json`` last, see the module docstring); returns the path."""
    meta = _check_meta(meta)
    _check_variables(variables, meta)
    meta["tensors_sha256"] = tensor_checksum(_to_numpy(dict(variables)))
    if storage.is_url(path):
        return _save_url(storage.path(path), variables, meta, overwrite)
    path = Path(path).absolute()
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
        if not is_model_dir(path):
            raise FileExistsError(f"{path} exists and is not a model directory; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _save_variables(tmp / VARIABLES_DIR, variables)
        (tmp / META_FILE).write_text(_meta_text(meta))
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _save_url(path: storage.AnyPath, variables: Mapping[str, Any], meta: dict[str, Any],
              overwrite: bool) -> storage.AnyPath:
    """`save_model_dir` on a bucket: ``meta.json`` is always the last object written, so a folder without it
    (being written, or left by an interrupted write) is never read as a model. A new folder is written in
    place; a replaced one first into a fresh sibling prefix, which is kept (complete, with its ``meta.json``)
    if copying it over fails."""
    storage.forget_listings(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
        if not (is_model_dir(path) or is_interrupted_write(path)):
            raise FileExistsError(f"{path} exists and is not a model directory; refusing to replace it")
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        _write_whole_or_nothing(tmp, variables, meta)
        # the new model is complete in `tmp`: only now is the old one taken away (meta.json first, so no
        # reader takes the folder for a model while it is removed or refilled)
        if (path / META_FILE).exists():
            (path / META_FILE).unlink()
        storage.forget_listings(path)
        storage.remove_tree(path)
        storage.copy_tree(tmp / VARIABLES_DIR, path / VARIABLES_DIR)
        storage.write_text(path / META_FILE, _meta_text(meta))
        storage.remove_tree(tmp)
        return path
    _write_whole_or_nothing(path, variables, meta)
    return path


def _write_whole_or_nothing(where: storage.AnyPath, variables: Mapping[str, Any], meta: dict[str, Any]) -> None:
    """A model folder on a bucket, ``meta.json`` last; on any failure whatever was written is removed."""
    try:
        _save_variables_url(where / VARIABLES_DIR, variables)
        storage.write_text(where / META_FILE, _meta_text(meta))
    except BaseException:
        storage.remove_tree(where)  # lists afresh: also what orbax wrote through TensorStore
        raise


def load_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta.json`` of a model directory; `NotAModelDirError` naming the path when it is not one."""
    p = storage.absolute(path)
    storage.forget_listings(p)
    if not p.exists():
        problem = storage.url_problem(p) if storage.is_url(p) else None
        raise FileNotFoundError(f"{p}: {problem or 'no such model directory'}")
    if not p.is_dir():
        raise NotAModelDirError(f"{p} is not an l2l-jax model directory (it is a file, not a directory)")
    try:
        meta = json.loads((p / META_FILE).read_text())
    except FileNotFoundError:
        why = ("no meta.json: an unfinished or interrupted write; write it again (l2l-convert --overwrite)"
               if is_interrupted_write(p) else f"no {META_FILE}")
        raise NotAModelDirError(f"{p} is not an l2l-jax model directory ({why})") from None
    except ValueError as e:
        raise NotAModelDirError(f"{p / META_FILE} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise NotAModelDirError(f"{p} is not an l2l-jax model directory ({META_FILE} has no format {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise NotAModelDirError(
            f"{p}: model directory format version {meta.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    try:
        return _check_meta(meta)
    except WeightsError as e:
        raise NotAModelDirError(f"{p / META_FILE}: {e}") from None


def load_model_dir(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a model directory: (variables as nested dicts of numpy arrays, meta)."""
    p = storage.absolute(path)
    meta = load_meta(p)
    want = meta.get("tensors_sha256")
    if not isinstance(want, str):
        raise NotAModelDirError(f"{p}: {META_FILE} has no tensors_sha256, so its tensors cannot be verified; "
                                "convert the model again (l2l-convert) or restore the field")
    if not (p / VARIABLES_DIR).is_dir():
        raise NotAModelDirError(f"{p} is not an l2l-jax model directory (no {VARIABLES_DIR}/)")
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            variables = ckptr.restore(p / VARIABLES_DIR)
    except Exception as e:  # orbax/tensorstore raise many types for a damaged directory
        raise NotAModelDirError(f"{p / VARIABLES_DIR}: cannot be read ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''}); convert the model again") from e
    variables = jax.tree.map(np.asarray, variables)
    if tensor_checksum(variables) != want:
        raise NotAModelDirError(f"{p}: the tensors do not match the checksum in {META_FILE} (a data file was "
                                "changed or damaged); convert the model again")
    try:
        _check_variables(variables, meta)
    except WeightsError as e:
        raise NotAModelDirError(f"{p}: {e}") from None
    return variables, meta
