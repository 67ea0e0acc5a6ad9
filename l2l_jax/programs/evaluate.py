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
(`l2l_jax.config.Settings.eval_loader`); otherwise upstream's batches are kept.

``--start_idx_file F.json`` (``{"<dataset index>": start, ...}``) feeds given start clips instead of the
seeded draws (the tests feed upstream's recorded ones). Input errors (flags, output paths, weights, the
split) end the program with one line and exit status 2 (``--debug``: the traceback). The weights, --metrics_json,
--export, --plot and --start_idx_file may be URLs (``gs://bucket/...``, `l2l_jax.storage`).
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from collections.abc import Sequence

from l2l_jax import config, parallel, storage, weights
from l2l_jax.config import EvalOutputs, Settings
from l2l_jax.data.index import DatasetError
from l2l_jax.data.source import FeatureSource, open_split
from l2l_jax.errors import ConfigError
from l2l_jax.evaluation import report
from l2l_jax.evaluation.evaluator import Evaluator
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
    settings = config.settings(cfg, "eval")
    outputs = settings.outputs
    check_output_paths(outputs)
    starts = read_start_file(outputs.start_idx_file) if outputs.start_idx_file else None
    loaded = weights.eval_weights(settings)
    source = open_test_split(settings)
    mesh = parallel.make_mesh()
    loader = settings.eval_loader(source)
    evaluator = Evaluator(build_model(settings.model, settings.variant), settings.model, settings.variant.name,
                          hard=settings.hard, mesh=mesh, seed=settings.seed, layout=settings.layout)
    try:
        result = evaluator.run(loaded.variables, loader, start_idx=starts)
    except DatasetError as e:  # a feature file changed or vanished since the split was checked
        raise ConfigError(f"--test_dataset_file {settings.data.test_file}: {e}") from e
    print(report.summary_lines(result, str(settings.weights.pretrained)))
    print(report.comparison_table(result))
    if outputs.metrics_json:
        with writing(outputs.metrics_json, "--metrics_json"):
            report.write_metrics_json(result, outputs.metrics_json, checkpoint=str(loaded.ref.where))
    names = report.video_names(source)
    if outputs.export:
        with writing(outputs.export, "--export"):
            report.write_export(result, outputs.export, names)
    if outputs.plot:
        from l2l_jax.evaluation import plots  # matplotlib: loaded only when pictures are asked for

        with writing(outputs.plot, "--plot"):
            plots.write_all(result, outputs.plot, names, max_videos=outputs.plot_videos)
    return 0


def check_output_paths(outputs: EvalOutputs) -> None:
    """Before anything runs (`l2l_jax.outputs`): --metrics_json and --export can take a file (not a
    directory, FIFO or device, not read-only, not below a file), --plot a directory."""
    for flag, path in (("metrics_json", outputs.metrics_json), ("export", outputs.export)):
        if path:
            output_file(path, f"--{flag}")
    if outputs.plot:
        output_dir(outputs.plot, "--plot")


def read_start_file(path: str | os.PathLike) -> dict[int, int]:
    """``{"<dataset index>": start clip}`` from a JSON file (test-only: feeds recorded upstream starts)."""
    try:
        raw = json.loads(storage.path(path).read_text())
        return {int(k): int(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise ConfigError(f"--start_idx_file {path}: cannot read a JSON object of index -> start ({e})") from None


def open_test_split(settings: Settings) -> FeatureSource:
    """The split of --test_dataset_file; a missing or invalid one is a `ConfigError` naming the file."""
    path = settings.data.test_file
    try:
        return open_split(path, **settings.data.split_options())
    except (DatasetError, OSError) as e:
        raise ConfigError(f"--test_dataset_file {path}: {e}") from e
    except (pickle.UnpicklingError, EOFError) as e:
        raise ConfigError(f"--test_dataset_file {path}: not a dataset pickle or packed split ({e})") from e


if __name__ == "__main__":
    sys.exit(main())
