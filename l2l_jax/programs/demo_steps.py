"""The steps `l2l-demo`'s presets share: how a step is announced and run, and the policy's training and
evaluation (steps 3 and 4) through `l2l-train` and `l2l-eval`, of either variant (`l2l_jax.variants`).

`l2l_jax.programs.demo` (the default, tiny and videos presets) and `l2l_jax.programs.demo_distill` (the distill
preset) both build on this module; it imports neither.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from l2l_jax import variants
from l2l_jax.programs import evaluate, flags, train
from l2l_jax.training.log import CONFIG_FILE

#: E of the evaluation (the last screen's comparison).
EPISODE_LENGTH = 10


def config_file() -> Path:
    """configs/synthetic.py of this checkout (the package is installed editable, beside configs/)."""
    return Path(__file__).resolve().parents[2] / "configs" / "synthetic.py"


def _shown(path: Path | str) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _header(n: int | None, text: str) -> None:
    """A step's banner ``[n/5] text``; with `n` None a lighter one (a part of a step)."""
    if n is None:
        print(f"\n{'-' * 100}\n{text}\n{'-' * 100}", flush=True)
    else:
        print(f"\n{'=' * 100}\n[{n}/5] {text}\n{'=' * 100}", flush=True)


def _run(program: str, entry: Callable[[list[str]], Any], argv: list[str]) -> float:
    """Print the command line, run the program's main(argv), fail on a non-zero status; returns the seconds."""
    print(f"$ {program} {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    status = entry(argv)
    if status not in (None, 0):
        raise SystemExit(f"l2l-demo: {program} failed with status {status}")
    return time.perf_counter() - t0


def _run_module(program: str, module: str, argv: list[str]) -> float:
    """Like `_run`, for a program that the library may not import (`l2l-convert`, in `convert/`): runs
    ``python -m module argv`` in a child process and shows what it printed; returns the seconds."""
    print(f"$ {program} {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, check=False)
    if done.stdout:
        print(done.stdout, end="", flush=True)
    if done.stderr:
        print(done.stderr, end="", file=sys.stderr, flush=True)
    if done.returncode != 0:
        raise SystemExit(f"l2l-demo: {program} failed with status {done.returncode}")
    return time.perf_counter() - t0


def variant_flags(variant: str, embedding_size: int | None = None) -> list[str]:
    """The flags of l2l-train and l2l-eval that select `variant`: none for the programs' default (also
    configs/synthetic.py's), else ``--variant``, with ``--embedding_size`` where the variant's feature width is
    not fixed."""
    spec = variants.get(variant)
    if spec is variants.DEFAULT:
        return []
    width = [] if spec.fixed_width is not None or embedding_size is None else ["--embedding_size", str(embedding_size)]
    return ["--variant", spec.name, *width]


def step_train(out: Path, data: Path, num_classes: int, weights: Path | None, train_flags: Sequence[str], seed: int,
               compute: Sequence[str] = (), step: int | None = 3, variant: str = variants.DEFAULT.name,
               embedding_size: int | None = None) -> dict[str, Any]:
    """Step 3 (`step`; None: part of another): l2l-train with configs/synthetic.py (plus the preset's
    `train_flags`) of the `variant` (`variant_flags`) from the converted fusion net `weights` (None: none, e.g.
    the single-modality variant, which has no fusion net) into OUT/train; returns the run directory, the
    seconds, the speed and the number of epochs."""

    run_dir = out / "train"
    spec = variants.get(variant)
    _header(step, f"train the {spec.title} preview policy (configs/synthetic.py) -> {_shown(run_dir)}")
    if (run_dir / CONFIG_FILE).is_file():  # a previous demo's run: start afresh (l2l-train would resume it)
        print(f"removing the previous demo run {_shown(run_dir)}")
        shutil.rmtree(run_dir)
    start = [] if weights is None else ["--weights_audioImageModel", _shown(weights)]
    argv = ["--config", _shown(config_file()), *variant_flags(variant, embedding_size),
            "--train_dataset_file", _shown(data / "train.pkl"), "--test_dataset_file", _shown(data / "val.pkl"),
            "--num_classes", str(num_classes), *start, "--checkpoint_path", _shown(run_dir),
            "--seed", str(seed), *train_flags, *compute]
    seconds = _run("l2l-train", train.main, argv)
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in epochs if r.get("kind") == "epoch"]
    steady = epochs[1:] or epochs  # epoch 0 includes compiling
    videos = sum(r["train/videos_per_s"] * r["train/seconds"] for r in steady)
    rate = videos / max(sum(r["train/seconds"] for r in steady), 1e-9)
    return {"dir": run_dir, "seconds": seconds, "videos_per_s": rate, "epochs": len(epochs), "variant": spec.name}


def step_eval(out: Path, data: Path, num_classes: int, run_dir: Path, seed: int, compute: Sequence[str] = (),
              step: int | None = 4, episode_length: int = EPISODE_LENGTH,
              variant: str = variants.DEFAULT.name, embedding_size: int | None = None) -> dict[str, Any]:
    """Step 4 (`step`; None: part of another): l2l-eval of the `variant`'s final model (`variant_flags`) at
    E = `episode_length` with baselines, metrics JSON (OUT/metrics.json), per-video export (OUT/clips.jsonl)
    and plots (OUT/plots)."""

    spec = variants.get(variant)
    _header(step, f"evaluate the {spec.title} policy and the baselines (uniform, random, all clips)")
    cfg = flags.load_config_file(str(config_file()))
    switches = [f"--{k}" for k in ("with_replacement", "mean_feature_as_start", "compute_mAP") if cfg.get(k)]
    metrics, plots, export = out / "metrics.json", out / "plots", out / "clips.jsonl"
    argv = [*variant_flags(variant, embedding_size), "--test_dataset_file", _shown(data / "val.pkl"),
            "--num_classes", str(num_classes), "--episode_length", str(episode_length),
            "--pretrained_model", _shown(run_dir / "model_final"), *switches, "--batch_size", str(cfg.batch_size),
            "--buckets", *map(str, cfg.buckets), "--seed", str(seed),
            "--metrics_json", _shown(metrics), "--plot", _shown(plots), "--export", _shown(export), *compute]
    for path in (metrics, export):  # a previous demo's outputs (l2l-eval never overwrites silently)
        path.unlink(missing_ok=True)
    seconds = _run("l2l-eval", evaluate.main, argv)
    return {"metrics": metrics, "plots": plots, "export": export, "seconds": seconds,
            "result": json.loads(metrics.read_text())}


__all__ = ["EPISODE_LENGTH", "config_file", "step_eval", "step_train", "variant_flags"]
