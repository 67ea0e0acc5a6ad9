"""`l2l-predict`'s library: class probabilities and the previewed moments of unlabelled videos.

- `features`: the image and audio networks (and video model) that made a model's training features, found
  from the training data's ``extract.json``; features made exactly as `l2l-extract` makes them, cached by the
  video's content and the settings.
- `policy`: the trained preview policy on those features, through `l2l_jax.evaluation.Evaluator` (the code
  `l2l-eval` runs), with start clips drawn from each video's content.
- `present`: top-k classes, previewed seconds, the table, JSON lines and timelines.
"""
