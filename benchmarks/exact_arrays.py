"""Every array the exact mode computes, saved so that two versions of the code can be compared bit for bit.

    python benchmarks/exact_arrays.py --out runs/arrays_before.npz     # save (about a minute on two CPU cores)
    python benchmarks/exact_arrays.py --compare A.npz B.npz            # exit 0 only if every array is identical

For both variants (``two``, ``single``) and both layouts (``dense``, ``chunk``), built through the library as
l2l-train and l2l-eval build them (flags -> `config` -> data loaders, model, recipe, jitted steps), at
``--precision exact`` on the CPU, from a small seeded synthetic dataset (`l2l_jax.data.synthetic`, written to a
temporary folder):

- ``<variant>/<layout>/train1/...`` and ``train2/...``: the whole train state after steps 1 and 2 (``params``,
  ``batch_stats``, ``opt_state``, ``step``, ``rng``), the step's ``metrics`` and the epoch ``sums``;
- ``<variant>/<layout>/eval_step/...``: the eval step's outputs on the first validation batch (state of step 2);
- ``<variant>/<layout>/evaluator/...`` and ``evaluator_hard/...`` (--gt_feature_eval): every number of the
  `Evaluator`'s result with baselines on the validation split (summary numbers, baselines, k-step curves,
  per-video arrays; timings left out; a missing number is saved as the string ``None``).

``--compare`` prints how many arrays are identical (dtype, shape and bytes), and lists those that differ (with
the largest absolute difference) or that only one file has.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package of this checkout

import jax  # noqa: E402
import numpy as np  # noqa: E402

import l2l_jax  # noqa: E402
from l2l_jax import parallel, weights  # noqa: E402
from l2l_jax.data.source import open_split  # noqa: E402
from l2l_jax.data.synthetic import PRESETS, generate  # noqa: E402
from l2l_jax.evaluation.evaluator import Evaluator  # noqa: E402
from l2l_jax.model import build_model  # noqa: E402
from l2l_jax.steps import create_train_state, make_eval_step, make_train_step  # noqa: E402

try:  # the flag table
    from l2l_jax import cli as flags  # noqa: E402
except ImportError:
    from l2l_jax.programs import flags  # noqa: E402
try:  # what the programs build from the flags
    from l2l_jax import config  # noqa: E402
except ImportError:
    from l2l_jax import settings as config  # noqa: E402
try:  # the training loop's on-device epoch sums
    from l2l_jax.training.loop import make_epoch_step, zero_sums  # noqa: E402
except ImportError:
    make_epoch_step = zero_sums = None

VARIANTS = ("two", "single")
LAYOUTS = ("dense", "chunk")
STEPS = 2
#: a few videos of the tiny preset: 20 training videos (batches of 8, 8, 4), 12 validation videos
DATA = dataclasses.replace(PRESETS["tiny"], num_train=20, num_val=12, len_max=80)
#: one length bucket (every video fits): one executable per step and evaluator
COMMON = ["--num_classes", str(DATA.num_classes), "--batch_size", "8", "--seed", "0", "--decode_threads", "2",
          "--precision", "exact", "--buckets", "96"]
#: model flags per variant (both programs), and the recipe flags of l2l-train
MODEL_FLAGS = {
    "two": ["--mean_feature_as_start", "--with_replacement", "--feature_interpolate", "--subsample_factor", "2"],
    "single": ["--feature_interpolate"],  # its own defaults: s = 2, random start
}
TRAIN_FLAGS = {
    "two": ["--with_avgpool_ce_loss", "--with_lstm_ce_loss", "--scheduler", "--warmup_epochs", "1", "--epochs", "3",
            "--milestones", "2", "3"],
    "single": ["--with_avgpool_ce_loss", "--with_lstm_ce_loss", "--scheduler", "--epochs", "3"],
}
#: EvalResult fields that are wall-clock times, not numbers the code computes
TIMINGS = frozenset({"videos_per_second", "compile_seconds", "run_seconds"})


# ------------------------------------------------------------------------------------------------ flattening
def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flatten(prefix: str, tree: Any) -> dict[str, np.ndarray]:
    """A pytree's leaves as host arrays named ``prefix/<path>`` (jax keys turned into raw key data)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        name = "/".join([prefix, *(_key_name(p) for p in path)])
        out[name] = np.asarray(parallel.to_host(leaf))
    return out


def flatten_result(prefix: str, value: Any) -> dict[str, np.ndarray]:
    """Every number of an evaluation result (dataclass, mappings, lists, arrays; strings and timings skipped)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if str(k) not in TIMINGS:
                out.update(flatten_result(f"{prefix}/{k}", v))
        return out
    if value is None:
        return {prefix: np.asarray("None")}
    if isinstance(value, str):
        return {}
    if isinstance(value, (list, tuple)) and any(v is None or isinstance(v, (Mapping, list, tuple)) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten_result(f"{prefix}/{i}", v))
        return out
    return {prefix: np.asarray(value)}


# ------------------------------------------------------------------------------------------------ building
@dataclasses.dataclass
class Built:
    """What a program builds from its resolved flags: the one place that knows the settings API."""

    variant: str
    seed: int
    model_cfg: Any  # the model's PreviewConfig (with the numerics policy)
    layout: str
    split_options: dict[str, Any]  # keyword arguments of open_split
    recipe: Callable[[int], Any] | None  # iterations per epoch -> Recipe (l2l-train)
    train_loader: Callable[[Any], Any]
    eval_loader: Callable[[Any], Any]
    initial_variables: Callable[[], dict]


def build(program: str, variant: str, layout: str, data: Path) -> Built:
    """The flags of l2l-train or l2l-eval for one variant and layout on the synthetic set, checked and built
    (by the typed `config.settings` where the package has it, else by the functions of `config`)."""
    argv = [*COMMON, "--variant", variant, "--layout", layout, "--feature_root", str(data),
            "--test_dataset_file", str(data / "val.pkl"), *MODEL_FLAGS[variant]]
    if program == "train":
        argv += ["--train_dataset_file", str(data / "train.pkl"), "--checkpoint_path", str(data / "run"),
                 *TRAIN_FLAGS[variant]]
    cfg = flags.resolve(program, argv)
    config.check(cfg, program)
    if hasattr(config, "settings"):
        s = config.settings(cfg, program)
        return Built(variant=s.variant.name, seed=s.seed, model_cfg=s.model, layout=s.layout,
                     split_options=s.data.split_options(progress=False),
                     recipe=s.recipe.build if s.recipe is not None else None, train_loader=s.train_loader,
                     eval_loader=s.eval_loader, initial_variables=lambda: weights.initial_variables(s))
    return Built(variant=cfg["variant"], seed=int(cfg["seed"]), model_cfg=config.model_config(cfg),
                 layout=config.layout(cfg), split_options=config.split_options(cfg, progress=False),
                 recipe=(lambda n: config.recipe(cfg, n)) if program == "train" else None,
                 train_loader=lambda src: config.make_train_loader(cfg, src),
                 eval_loader=lambda src: config.make_eval_loader(cfg, src),
                 initial_variables=lambda: config.initial_variables(cfg))


# ------------------------------------------------------------------------------------------------ computing
def train_arrays(b: Built, data: Path, mesh: Any) -> tuple[dict[str, np.ndarray], Any, Any]:
    """The train state, metrics and sums after each of the first `STEPS` steps, as l2l-train's loop builds and
    runs them; returns (arrays, model, the state's variables after the last step, on the host)."""
    loader = b.train_loader(open_split(data / "train.pkl", **b.split_options))
    model = build_model(b.model_cfg, b.variant)
    recipe = b.recipe(loader.batches_per_epoch)
    rep = parallel.replicated(mesh)
    opts = parallel.compiler_options()
    if make_epoch_step is not None:
        step = jax.jit(make_epoch_step(make_train_step(model, recipe)), donate_argnums=(0, 1),
                       out_shardings=(rep, rep, rep), compiler_options=opts)
        sums = parallel.replicate(zero_sums(), mesh)
    else:
        train_step = jax.jit(make_train_step(model, recipe), donate_argnums=(0,), out_shardings=(rep, rep),
                             compiler_options=opts)

        def step(state, sums, batch):  # no epoch sums
            state, metrics = train_step(state, batch)
            return state, None, metrics

        sums = None
    state = parallel.replicate(create_train_state(b.initial_variables(), recipe.optimizer(), b.seed), mesh)
    batches = loader.iterator(num_epochs=1, start_epoch=0)
    out: dict[str, np.ndarray] = {}
    for k in range(1, STEPS + 1):
        batch = parallel.shard_batch(next(batches), mesh, b.layout)
        state, sums, metrics = step(state, sums, batch)
        host_state = parallel.to_host(state)  # before the next step donates it
        out.update(flatten(f"train{k}", host_state))
        out.update(flatten(f"train{k}/metrics", metrics))
        if sums is not None:
            out.update(flatten(f"train{k}/sums", sums))
    return out, model, {"params": host_state.params, "batch_stats": host_state.batch_stats}


def eval_arrays(b: Built, data: Path, model: Any, variables: Any, mesh: Any) -> dict[str, np.ndarray]:
    """The eval step's outputs on the first validation batch and the `Evaluator`'s results with baselines, soft
    and hard (--gt_feature_eval), as l2l-eval builds them."""
    loader = b.eval_loader(open_split(data / "val.pkl", **b.split_options))
    step = jax.jit(make_eval_step(model), compiler_options=parallel.compiler_options())
    batch = parallel.shard_batch(next(iter(loader)), mesh, b.layout)
    key = jax.device_put(jax.random.key(b.seed), parallel.replicated(mesh))
    out = flatten("eval_step", step(parallel.replicate(variables, mesh), batch, key))
    for name, hard in (("evaluator", False), ("evaluator_hard", True)):
        evaluator = Evaluator(build_model(b.model_cfg, b.variant), b.model_cfg, b.variant, hard=hard,
                              with_baselines=True, mesh=mesh, seed=b.seed, layout=b.layout)
        out.update(flatten_result(name, evaluator.run(variables, loader, progress=False)))
    return out


def compute(data: Path) -> dict[str, np.ndarray]:
    """Every array, named ``<variant>/<layout>/...``."""
    mesh = parallel.make_mesh()
    arrays: dict[str, np.ndarray] = {}
    for variant in VARIANTS:
        for layout in LAYOUTS:
            t0 = time.perf_counter()
            train, model, variables = train_arrays(build("train", variant, layout, data), data, mesh)
            evals = eval_arrays(build("eval", variant, layout, data), data, model, variables, mesh)
            for name, value in {**train, **evals}.items():
                arrays[f"{variant}/{layout}/{name}"] = value
            print(f"{variant}/{layout}: {len(train) + len(evals)} arrays ({time.perf_counter() - t0:.1f} s)")
    return arrays


def save(out: Path) -> None:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="exact_arrays_") as tmp:
        data = generate(Path(tmp) / "synth", config=DATA, seed=0, progress=False)
        arrays = compute(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    print(f"{len(arrays)} arrays -> {out} ({time.perf_counter() - t0:.1f} s; package {Path(l2l_jax.__file__).parent})")


# ------------------------------------------------------------------------------------------------ comparing
def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"{a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        return "values differ"
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return f"max abs diff {np.nanmax(diff) if np.any(~np.isnan(diff)) else float('nan'):.3e}"


def compare(path_a: Path, path_b: Path) -> int:
    """Prints the comparison; returns 0 if both files hold the same names with bitwise identical arrays."""
    with np.load(path_a, allow_pickle=False) as za, np.load(path_b, allow_pickle=False) as zb:
        a = {k: za[k] for k in za.files}
        b = {k: zb[k] for k in zb.files}
    same, differ = 0, []
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        if x.dtype == y.dtype and x.shape == y.shape and np.ascontiguousarray(x).tobytes() == \
                np.ascontiguousarray(y).tobytes():
            same += 1
        else:
            differ.append((name, _max_abs_diff(x, y)))
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    print(f"{same} of {len(set(a) | set(b))} arrays identical bit for bit ({path_a} vs {path_b})")
    for name, why in differ:
        print(f"DIFFERS {name}: {why}")
    for name in only_a:
        print(f"MISSING from {path_b}: {name}")
    for name in only_b:
        print(f"MISSING from {path_a}: {name}")
    return 0 if not (differ or only_a or only_b) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="compute every array and save them here (.npz)")
    group.add_argument("--compare", type=Path, nargs=2, metavar=("A", "B"), help="compare two saved files")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
