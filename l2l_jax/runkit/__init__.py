"""The run directory kit: what every trainer (l2l-train, l2l-finetune, l2l-distill) keeps in its run directory,
implemented once, so that a run is never lost, corrupted or silently wrong:

* `l2l_jax.runkit.lock`: one run writes into a directory at a time (``.lock``; `RunLock`, `lock_run`);
* `l2l_jax.runkit.checkpoints`: orbax checkpoints of any state pytree plus a JSON progress item, with a
  checksum verified on restore, fallback from a damaged newest one, quarantine (``corrupt-<step>-<time>``),
  keep-N and atomic writes (`RunCheckpoints`); ``--pretrained_model`` reads their params (`read_run_params`);
* `l2l_jax.runkit.settings`: the record of the settings the checkpoints depend on; a rerun with other
  settings or fewer epochs is refused before any work, naming each difference (`check_rerun`);
* `l2l_jax.runkit.metrics`: ``metrics.jsonl`` records, appended and trimmed on resume (`MetricsFile`);
* `l2l_jax.runkit.run`: all of it in one call for a trainer (`open_run`), and its progress bar (`epochs_bar`).

Library layer: imports only errors, integrity, outputs, parallel, orbax, numpy and jax. Submodules are
imported by name (``from l2l_jax.runkit.checkpoints import RunCheckpoints``); this package imports nothing.
"""
