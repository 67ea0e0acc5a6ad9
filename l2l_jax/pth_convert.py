"""Upstream state dicts <-> converted-model directories, with strict checks.

Reading (`variables_from_state_dict`): a ``module.`` prefix is removed when every key has it (as upstream's
loader does); each expected key is then taken from the loaded key that equals it or ends with ``"." + key``
(upstream's suffix matching, made dot-aware and unambiguous). Everything wrong -- missing, extra, ambiguous,
mis-shaped or wrongly typed tensors -- is listed in one `ConversionError`; nothing is converted partially. C and
D come from the tensor shapes. Names and layouts are `l2l_jax.torch_names`'.

Writing (`export_checkpoint`): ``{"model": OrderedDict(state dict in upstream's order: float32 tensors, int64
num_batches_tracked), "epoch": int, "namespace": argparse.Namespace}``, which upstream's code loads with
``load_state_dict(strict=True)`` (its loaders read only ``"model"``). ``epoch`` is the source checkpoint's epoch
when known, else 0; ``namespace`` holds the source checkpoint's flags when the model came from upstream (the
JSON-able ones), else ``num_classes`` (and ``embedding_size`` for single), plus ``l2l_jax_variant`` and
``l2l_jax_source``. There is no optimizer or scheduler state: upstream cannot *resume* training from it.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from l2l_jax import model_dir, storage, torch_names, variants
from l2l_jax.torch_io import ConversionError, read_state_dict, write_torch_file

PREFIX = "module."
# Where C and D can be read, per variant: (key, axis) in order of preference.
_C_FROM = [("net_classifier.classifier.weight", 0), ("net_classifier.classifier.bias", 0),
           ("prediction_fc.weight", 0), ("prediction_fc.bias", 0)]
_D_FROM = [("net_classifier.classifier.weight", 1), ("key_conv1x1.0.weight", 1), ("rnn.weight_ih_v", 1)]


def strip_module_prefix(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Removes a leading ``module.`` (DataParallel) when every key has it, as upstream does."""
    if sd and all(k.startswith(PREFIX) for k in sd):
        return {k[len(PREFIX):]: v for k, v in sd.items()}
    return dict(sd)


def match_keys(loaded: list[str], expected: list[str]) -> tuple[dict[str, str], list[str], list[str], list[str]]:
    """Expected key -> loaded key (exact, else the one loaded key ending with ``.`` + expected key).

    Returns (matches, missing, extra, ambiguous descriptions)."""
    loaded_set = set(loaded)
    matches: dict[str, str] = {}
    missing, ambiguous = [], []
    for key in expected:
        if key in loaded_set:
            matches[key] = key
            continue
        cands = [k for k in loaded if k.endswith("." + key) and k not in expected]
        if len(cands) == 1:
            matches[key] = cands[0]
        elif cands:
            ambiguous.append(f"{key} <- {cands}")
        else:
            missing.append(key)
    used: dict[str, list[str]] = {}
    for key, src in matches.items():
        used.setdefault(src, []).append(key)
    for src, keys in used.items():
        if len(keys) > 1:
            ambiguous.append(f"{src} -> {keys}")
    extra = [k for k in loaded if k not in used]
    return matches, missing, extra, ambiguous


def _dims(sd: Mapping[str, np.ndarray], variant: str) -> tuple[int | None, int | None]:
    def first(options):
        for key, axis in options:
            if key in sd and np.ndim(sd[key]) > axis:
                return int(np.shape(sd[key])[axis])
        return None

    fixed = variants.FUSION_WIDTH if variant == variants.IMAGEAUDIONET else variants.get(variant).fixed_width
    return first(_C_FROM), (first(_D_FROM) if fixed is None else fixed)


def convert_command(kind: str) -> str:
    """The l2l-convert command line that converts a checkpoint of this model kind."""
    if kind == variants.IMAGEAUDIONET:
        return f"l2l-convert {variants.IMAGEAUDIONET}"
    return "l2l-convert preview" + ("" if kind == variants.DEFAULT.name else f" --variant {kind}")


def _fmt(kind: str, items: list[str]) -> str:
    return f"  {kind} ({len(items)}):\n" + "".join(f"    {x}\n" for x in items)


def _best_variant_hint(loaded: list[str], variant: str) -> str:
    for other in torch_names.VARIANTS:
        if other != variant:
            matches, missing, extra, amb = match_keys(loaded, torch_names.state_dict_keys(other))
            if not (missing or extra or amb):
                return f"  hint: these are exactly the keys of the {other!r} model: use `{convert_command(other)}`\n"
    return ""


def select_state_dict(sd: Mapping[str, np.ndarray], variant: str, source: str) -> tuple[dict[str, np.ndarray],
                                                                                        int, int]:
    """The variant's state dict in upstream's order (strictly checked), C and D. `ConversionError` lists every
    problem at once, naming ``source``."""
    sd = strip_module_prefix(sd)
    expected = torch_names.state_dict_keys(variant)
    loaded = list(sd)
    matches, missing, extra, ambiguous = match_keys(loaded, expected)
    picked = {key: sd[src] for key, src in matches.items()}
    num_classes, feature_dim = _dims(picked, variant)
    if num_classes == 0 or feature_dim == 0:
        raise ConversionError(f"{source}: the classifier has {num_classes} classes and feature width {feature_dim}; "
                              "a model needs at least 1 of each, nothing was converted")
    problems = ""
    if missing:
        problems += _fmt("missing", missing)
    if extra:
        problems += _fmt("unexpected", extra)
    if ambiguous:
        problems += _fmt("ambiguous", ambiguous)
    if num_classes is None or feature_dim is None:
        problems += "  cannot tell the number of classes / feature width from the tensors\n"
    else:
        shapes = torch_names.expected_shapes(variant, num_classes, feature_dim)
        wrong = [f"{matches[k]}: {tuple(np.shape(v))}, expected {shapes[k]}"
                 for k, v in picked.items() if tuple(np.shape(v)) != shapes[k]]
        if wrong:
            problems += _fmt(f"mis-shaped (C={num_classes}, D={feature_dim})", wrong)
    dtypes = []
    for k, v in picked.items():
        want_int = k.endswith("num_batches_tracked")
        ok = np.issubdtype(v.dtype, np.integer) if want_int else v.dtype == np.float32
        if not ok:
            dtypes.append(f"{matches[k]}: {v.dtype}, expected {'an integer' if want_int else 'float32'}")
    if dtypes:
        problems += _fmt("wrong dtype", dtypes)
    nonfinite = [matches[k] for k, v in picked.items()
                 if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.all(np.isfinite(v))]
    if nonfinite:
        problems += _fmt("non-finite values (NaN or inf)", nonfinite)
    if problems:
        raise ConversionError(f"{source} is not an upstream {variant!r} state dict; nothing was converted:\n"
                              + problems + _best_variant_hint(loaded, variant))
    return {k: picked[k] for k in expected}, num_classes, feature_dim


def _jsonable(extras: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    epoch = extras.get("epoch")
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        out["epoch"] = epoch
    ns = extras.get("namespace")
    if isinstance(ns, argparse.Namespace):
        args = {}
        for k, v in vars(ns).items():
            try:
                json.dumps(v)
            except (TypeError, ValueError):
                continue
            args[k] = v
        out["upstream_args"] = args
    return out


def variables_from_state_dict(sd: Mapping[str, np.ndarray], variant: str, source: str,
                              extras: Mapping[str, Any] | None = None) -> tuple[dict, dict[str, Any]]:
    """Strictly checked upstream state dict -> (Flax variables, model-directory meta)."""
    picked, num_classes, feature_dim = select_state_dict(sd, variant, source)
    variables = torch_names.from_state_dict(picked, variant)
    meta = {"variant": variant, "num_classes": num_classes, "feature_dim": feature_dim, "source": source,
            **_jsonable(extras or {})}
    return variables, meta


def detect_variant(sd: Mapping[str, np.ndarray]) -> str | None:
    """The variant whose key set the state dict has exactly (after prefix removal / suffix matching), if any."""
    loaded = list(strip_module_prefix(sd))
    for variant in torch_names.VARIANTS:
        _, missing, extra, ambiguous = match_keys(loaded, torch_names.state_dict_keys(variant))
        if not (missing or extra or ambiguous):
            return variant
    return None


def load_upstream(torch_path: str | os.PathLike, variant: str | None = None) -> tuple[dict, dict[str, Any]]:
    """Upstream ``.pth`` -> (variables, meta) in memory (what `convert_file` would save). ``variant=None``
    detects it from the key set."""
    source = storage.display(torch_path)
    sd, extras = read_state_dict(torch_path)
    if variant is None:
        variant = detect_variant(sd)
        if variant is None:
            raise ConversionError(f"{source} does not hold the keys of any upstream model {torch_names.VARIANTS}")
    return variables_from_state_dict(sd, variant, source, extras)


def convert_file(torch_path: str | os.PathLike, out_dir: str | os.PathLike, variant: str, *,
                 overwrite: bool = False) -> tuple[storage.AnyPath, dict[str, Any]]:
    """Upstream ``.pth`` -> model directory. Returns (directory, meta)."""
    variables, meta = load_upstream(torch_path, variant)
    return model_dir.save_model_dir(out_dir, variables, meta, overwrite=overwrite), meta


def export_checkpoint(variables: Mapping, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Flax variables + meta -> the dict that `export_file` saves (``model`` as numpy, in upstream's order)."""
    variant = meta["variant"]
    sd = torch_names.to_state_dict(variables, variant)
    sd, _, _ = select_state_dict(sd, variant, f"the variables of {meta.get('source', 'a model directory')}")
    args = dict(meta.get("upstream_args") or {"num_classes": meta["num_classes"]})
    spec = variants.VARIANTS.get(variant)  # None for the fusion net + classifier
    if "upstream_args" not in meta and spec is not None and spec.fixed_width is None:  # --embedding_size
        args["embedding_size"] = meta["feature_dim"]
    args.update(l2l_jax_variant=variant, l2l_jax_source=str(meta.get("source", "")))
    return {"model": sd, "epoch": int(meta.get("epoch", 0)), "namespace": argparse.Namespace(**args)}


def export_file(flax_dir: str | os.PathLike, out_path: str | os.PathLike, *,
                overwrite: bool = False) -> storage.AnyPath:
    """Model directory -> upstream-format ``.pth`` (either may be a URL)."""
    out = storage.absolute(out_path)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    variables, meta = model_dir.load_model_dir(flax_dir)
    ckpt = export_checkpoint(variables, meta)
    return write_torch_file(out, ckpt.pop("model"), **ckpt)
