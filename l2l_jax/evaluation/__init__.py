"""Evaluation of the preview policy: upstream's metrics, baselines, reports and pictures.

- `evaluator`: `Evaluator` (built once per model and mode, owns its compiled executables;
  ``run(variables, loader) -> EvalResult``) and `EvalResult`;
- `baselines`: the baselines beside the policy, a name -> function registry (`BASELINES`, `register`),
  and the k-step curves;
- `report`: upstream's summary lines, the comparison table, the metrics JSON, the per-video export and
  the video names of a split;
- `plots`: timelines of the chosen clips and the mAP-vs-steps curve as PNGs (imported on its own: it
  loads matplotlib).

The `l2l-eval` program that puts these together is `l2l_jax.programs.evaluate`.
"""
