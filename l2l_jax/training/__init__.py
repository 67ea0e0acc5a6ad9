"""Training the preview policy (`l2l-train`, docs/UPSTREAM.md §6), in four modules over the run directory
kit (`l2l_jax.runkit`: the lock, checksummed checkpoints, the settings record, metrics.jsonl):

* `l2l_jax.training.loop`: `train`, the recipe as a loop: set up, restore, epochs of jitted steps,
  checkpoint and validate after each epoch, finish;
* `l2l_jax.training.log`: the run's outputs (`RunLog`): upstream's ``run.log`` and ``epoch.log`` lines and
  meters, ``metrics.jsonl``, TensorBoard, ``curves.png``;
* `l2l_jax.training.validation`: the per-epoch validation through the evaluator (`Validation`);
* `l2l_jax.training.rerun`: the settings its checkpoints depend on, recorded; a rerun with others refused.

A run is never lost, corrupted or silently wrong: checkpoints carry a checksum of their tensors, verified on
restore; a newest checkpoint that does not restore is reported, moved aside and the previous one used; an
epoch whose validation and record a kill cut off after its checkpoint is validated and written on resume.

The flags become typed settings in `l2l_jax.config` (`config.settings`); the program is
`l2l_jax.programs.train`. Import each name from the module that defines it (``from l2l_jax.training.loop
import train``); this package imports nothing.
"""
