"""Every way a user names weights, resolved in one place and loaded as numpy variables.

A weights argument (``--pretrained_model``, ``--weights_audioImageModel``, ``l2l-eval --pretrained_model``,
the benchmarks' ``--model``) may name:

* an upstream ``.pth`` file: read with the safe loader (``torch.load(weights_only=True)``) and converted,
  strictly checked (every missing, extra or mis-shaped tensor listed; `l2l_jax.pth_convert`);
* a converted-model directory (`l2l_jax.model_dir`, written by ``l2l-convert`` and at the end of training);
* a training run directory: its newest checkpoint; or the run's ``checkpoints/`` (the newest as well), or
  one step's directory ``checkpoints/<step>`` (that step). Restored on the host, on any device count;
* any other directory holding ``*.pth`` files: the newest by ctime (upstream's rule for a checkpoint folder).

Any of them may be a URL (``gs://bucket/...``, `l2l_jax.storage`): a ``.pth`` object is read into memory and
loaded as safely as a file; a "newest" ``.pth`` in a bucket folder is the newest by modification time (a
bucket keeps no ctime).

`resolve` says which (`WeightsRef`), `load` reads it; both raise `WeightsError` with the path and what to do.
What the programs start from: `initial_variables` (l2l-train: fresh, then its weights flags over them) and
`eval_weights` (l2l-eval, checked against the model's settings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import fsspec
import jax
import numpy as np

from l2l_jax import model_dir, storage, variants
from l2l_jax.config import Settings
from l2l_jax.errors import WeightsError
from l2l_jax.model import init_variables
from l2l_jax.pth_convert import variables_from_state_dict
from l2l_jax.runkit.checkpoints import CHECKPOINT_DIR, RunCheckpoints, find_run_checkpoint, read_run_params
from l2l_jax.torch_io import read_state_dict

Kind = Literal["pth", "model_dir", "run"]
#: The two-modality modules that ``--weights_audioImageModel`` sets: upstream's released ImageAudioNet.
FUSION_MODULES = variants.FUSION_MODULES


@dataclasses.dataclass(frozen=True)
class WeightsRef:
    """What a weights argument names: ``kind``, the file or directory, and for a run the checkpoint step."""

    kind: Kind
    path: storage.AnyPath
    step: int | None = None

    @property
    def where(self) -> storage.AnyPath:
        """The exact file or directory the weights come from (a run's step directory for runs)."""
        if self.kind == "run" and self.step is not None:
            return self.path / CHECKPOINT_DIR / str(self.step)
        return self.path


@dataclasses.dataclass(frozen=True)
class Weights:
    """Loaded weights: ``variables`` ({"params", "batch_stats"} of numpy arrays), ``meta`` (variant,
    num_classes, feature_dim, source, ...) and the `WeightsRef` they came from."""

    variables: dict[str, Any]
    meta: dict[str, Any]
    ref: WeightsRef


def resolve(path: str | Path, flag: str = "weights") -> WeightsRef:
    """The `WeightsRef` of a weights argument (see the module docstring). `flag` names the argument in
    errors (e.g. ``--pretrained_model``)."""
    p = storage.absolute(path)
    try:
        return _resolve(p, flag)
    except OSError as e:  # a bucket that refuses or does not answer
        raise WeightsError(f"{flag} {p}: cannot be read ({e.strerror or e})") from None


def _newest_pth(p: storage.AnyPath) -> storage.AnyPath | None:
    """The newest ``*.pth`` directly in folder `p` (ctime locally, upstream's rule; on a bucket the update time,
    to the microsecond, from one listing)."""
    if storage.is_url(p):
        fs, key = fsspec.core.url_to_fs(str(p))
        found = [(str(e.get("mtime") or e.get("updated") or ""), e["name"].rsplit("/", 1)[-1])
                 for e in fs.ls(key, detail=True) if e.get("type") == "file" and e["name"].endswith(".pth")]
        return p / max(found)[1] if found else None
    pths = sorted(p.glob("*.pth"), key=lambda q: q.stat().st_ctime)
    return pths[-1] if pths else None


def _resolve(p: storage.AnyPath, flag: str) -> WeightsRef:
    if not p.exists():
        problem = storage.url_problem(p) if storage.is_url(p) else None
        raise WeightsError(f"{flag} {p}: {problem or 'no such file or directory'}")
    if p.is_file():
        return WeightsRef("pth", p)
    if model_dir.is_model_dir(p):
        return WeightsRef("model_dir", p)
    run = find_run_checkpoint(p)
    if run is not None:
        run_dir, step = run
        if step is None:
            ckpts = RunCheckpoints(run_dir)
            try:
                step = ckpts.latest_step()
            finally:
                ckpts.close()
        return WeightsRef("run", run_dir, step)
    pth = _newest_pth(p)
    if pth is not None:
        return WeightsRef("pth", pth)
    if model_dir.is_interrupted_write(p):
        raise WeightsError(f"{flag} {p}: a model directory without its meta.json (an unfinished or interrupted "
                           "write); write it again")
    raise WeightsError(f"{flag} {p}: not an upstream .pth, a converted-model directory or a training run "
                       "directory, and no *.pth file there")


def load(path: str | Path | WeightsRef, variant: str, flag: str = "weights") -> Weights:
    """Loads the weights a path names for a model `variant` (a policy variant, or `variants.IMAGEAUDIONET`: the
    fusion net + classifier alone). A converted directory must hold that variant, except that a two-modality
    directory also serves `variants.IMAGEAUDIONET` (its fusion net and classifier)."""
    ref = path if isinstance(path, WeightsRef) else resolve(path, flag)
    try:
        if ref.kind == "pth":
            sd, extras = read_state_dict(ref.path)
            variables, meta = variables_from_state_dict(sd, variant, str(ref.path), extras)
        elif ref.kind == "model_dir":
            variables, meta = model_dir.load_model_dir(ref.path)
            if not variants.holds(meta["variant"], variant):
                raise WeightsError(f"{flag} {ref.path} holds a {meta['variant']!r} model, not {variant!r} "
                                   "(check --variant)")
        else:
            variables, step = read_run_params(ref.path, ref.step)
            ref = dataclasses.replace(ref, step=step)
            kernel = variables["params"]["net_classifier"]["classifier"]["kernel"]
            meta = {"variant": variant, "num_classes": int(kernel.shape[1]), "feature_dim": int(kernel.shape[0]),
                    "source": str(ref.where), "step": step}
    except WeightsError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise WeightsError(f"{flag} {ref.where}: {e}") from e
    return Weights(variables, meta, ref)


def merge(dst: dict, src: Mapping, source: str, what: str = "params") -> None:
    """Copies every array of `src` into the same place of `dst` (in place, keeping dst's dtypes); a name
    `dst` lacks or a shape that differs is a `WeightsError` naming `source`."""
    for key, value in src.items():
        if key not in dst:
            raise WeightsError(f"{source}: {what} has {key!r}, which this model lacks (check --variant)")
        if isinstance(value, Mapping):
            merge(dst[key], value, source, f"{what}/{key}")
        else:
            want, got = np.shape(dst[key]), np.shape(value)
            if want != got:
                raise WeightsError(f"{source}: {what}/{key} has shape {got}, the model expects {want} "
                                   "(check --num_classes / --embedding_size)")
            dst[key] = np.asarray(value, dtype=np.asarray(dst[key]).dtype)


def initial_variables(settings: Settings, log: Any = None) -> dict:
    """The variables a training run starts from: fresh ones with upstream's initial distributions (seeded by
    --seed), then --weights_audioImageModel (fusion net + classifier, two-modality only) and
    --pretrained_model (the whole preview model) over them, as upstream's main.py loads them (§6)."""
    spec = settings.variant
    fresh = init_variables(settings.model, spec.name, jax.random.key(settings.seed))
    variables = {k: jax.tree_util.tree_map(np.asarray, dict(v)) for k, v in fresh.items()}
    if settings.weights.fusion:
        path = settings.weights.fusion
        if not spec.fusion:
            if log is not None:
                log.warning(f"--weights_audioImageModel is ignored by the {spec.title} variant, as upstream")
        else:
            if log is not None:
                log.debug(f"Loading model only at: {path}")
            loaded = load(path, variants.IMAGEAUDIONET, "--weights_audioImageModel")
            sub = {k: loaded.variables["params"][k] for k in variants.FUSION_MODULES}
            merge(variables["params"], sub, str(loaded.ref.where))
    if settings.weights.pretrained:
        path = settings.weights.pretrained
        if log is not None:
            log.debug(f"Loading model only at: {path}")
        loaded = load(path, spec.name, "--pretrained_model")
        merge(variables["params"], loaded.variables["params"], str(loaded.ref.where))
        merge(variables["batch_stats"], loaded.variables.get("batch_stats", {}), str(loaded.ref.where), "batch_stats")
    return variables


def eval_weights(settings: Settings) -> Weights:
    """The weights l2l-eval evaluates (--pretrained_model), checked against --num_classes and the variant's
    feature width."""
    loaded = load(settings.weights.pretrained, settings.variant.name, "--pretrained_model")
    model = settings.model
    if loaded.meta["num_classes"] != model.num_classes:
        raise WeightsError(f"--pretrained_model {loaded.ref.where} has {loaded.meta['num_classes']} classes but "
                           f"--num_classes is {model.num_classes}")
    if loaded.meta["feature_dim"] != model.feature_dim:
        raise WeightsError(f"--pretrained_model {loaded.ref.where} takes {loaded.meta['feature_dim']}-wide features "
                           f"but --embedding_size is {model.feature_dim}")
    return loaded


__all__ = ["FUSION_MODULES", "Weights", "WeightsRef", "eval_weights", "initial_variables", "load", "merge",
           "resolve"]
