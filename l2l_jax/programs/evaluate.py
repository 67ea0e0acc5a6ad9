"""`l2l-eval`: upstream's evaluation (validate.py) on the accelerator, with baselines and what the policy chose.

    l2l-eval --test_dataset_file val.pkl --feature_root DIR --num_classes 200 --episode_length 10 \\
        --pretrained_model model_final.pth --with_replacement --mean_feature_as_start --feature_interpolate \\
        --subsample_factor 1 --compute_mAP [--gt_feature_eval] [--metrics_json m.json] [--export e.jsonl] \\
        [--plot DIR] [--layout auto|dense|chunk]

Prints upstream's summary lines (docs/UPSTREAM.md §7) and a table of the policy beside the baselines;
--metrics_json writes the numbers, --export one JSON line per video (chosen clips, modality weights), --plot
timelines and the mAP-vs-steps curve. The work is `l2l_jax.evaluation`; this module reads the flags, loads
the weights and the split, and writes the outputs. With s == 1 (or no interpolation) a two-modality video's
result does not depend on its batch (§7 "Eval determinism"), so the loader visits videos by length
(`l2l_jax.config.make_eval_loader`); otherwise upstream's batches are kept.

``--start_idx_file F.json`` (``{"<dataset index>": start, ...}``) feeds given start clips instead of the
seeded draws (the tests feed upstream's recorded ones). Input errors (flags, output paths, weights, the
split) end the program with one line and exit status 2 (``--debug``: the traceback).
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

from l2l_jax import config, data, parallel
from l2l_jax.errors import ConfigError
from l2l_jax.evaluation import Evaluator, report
from l2l_jax.model import build_model
from l2l_jax.outputs import output_dir, output_file, writing
from l2l_jax.programs import flags as program_flags


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `l2l-eval`; returns the exit status."""
    return program_flags.run_program("eval", lambda: _run(argv), argv)


def _run(argv: Sequence[str] | None) -> int:
    cfg = program_flags.resolve("eval", argv, description=__doc__.split("\n\n")[0])
    if not cfg.pretrained_model:
        print("No model for validation - failing!!!")
        return 0
    if not cfg.test_dataset_file:
        raise ConfigError("--test_dataset_file is required: the pickle (or packed split) to evaluate on")
    parallel.init_distributed(cfg)  # before anything asks jax about devices
    config.check(cfg, "eval")
    check_output_paths(cfg)
    starts = read_start_file(cfg.start_idx_file) if cfg.get("start_idx_file") else None
    loaded = config.eval_weights(cfg)
    source = open_test_split(cfg)
    mesh = parallel.make_mesh()
    loader = config.make_eval_loader(cfg, source)
    model_cfg = config.model_config(cfg)
    evaluator = Evaluator(build_model(model_cfg, cfg.variant), model_cfg, cfg.variant, hard=bool(cfg.gt_feature_eval),
                          mesh=mesh, seed=cfg.seed, layout=config.layout(cfg))
    try:
        result = evaluator.run(loaded.variables, loader, start_idx=starts)
    except data.DatasetError as e:  # a feature file changed or vanished since the split was checked
        raise ConfigError(f"--test_dataset_file {cfg.test_dataset_file}: {e}") from e
    print(report.summary_lines(result, str(cfg.pretrained_model)))
    print(report.comparison_table(result))
    if cfg.metrics_json:
        with writing(cfg.metrics_json, "--metrics_json"):
            report.write_metrics_json(result, cfg.metrics_json, checkpoint=str(loaded.ref.where))
    names = report.video_names(source)
    if cfg.export:
        with writing(cfg.export, "--export"):
            report.write_export(result, cfg.export, names)
    if cfg.plot:
        from l2l_jax.evaluation import plots

        with writing(cfg.plot, "--plot"):
            plots.write_all(result, cfg.plot, names, max_videos=cfg.plot_videos or None)
    return 0


def check_output_paths(cfg) -> None:
    """Before anything runs (`l2l_jax.outputs`): --metrics_json and --export can take a file (not a
    directory, FIFO or device, not read-only, not below a file), --plot a directory."""
    for flag in ("metrics_json", "export"):
        if cfg.get(flag):
            output_file(cfg[flag], f"--{flag}")
    if cfg.get("plot"):
        output_dir(cfg.plot, "--plot")


def read_start_file(path: str | os.PathLike) -> dict[int, int]:
    """``{"<dataset index>": start clip}`` from a JSON file (test-only: feeds recorded upstream starts)."""
    try:
        raw = json.loads(Path(path).read_text())
        return {int(k): int(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise ConfigError(f"--start_idx_file {path}: cannot read a JSON object of index -> start ({e})") from None


def open_test_split(cfg) -> data.FeatureSource:
    """The split of --test_dataset_file; a missing or invalid one is a `ConfigError` naming the file."""
    path = cfg.test_dataset_file
    try:
        return data.open_split(path, **config.split_options(cfg))
    except (data.DatasetError, OSError) as e:
        raise ConfigError(f"--test_dataset_file {path}: {e}") from e
    except (pickle.UnpicklingError, EOFError) as e:
        raise ConfigError(f"--test_dataset_file {path}: not a dataset pickle or packed split ({e})") from e

if __name__ == "__main__":
    sys.exit(main())
