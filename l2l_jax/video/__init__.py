"""The video library: clip features from raw video, the fusion net's fit on them, and the end-to-end distillation
of the clip networks. The programs on top are `l2l_jax.programs.extract`, `finetune` and `distill`.

- networks and their weights: `networks` (VisualNet, AudioNet), `convert` (their PyTorch state dicts:
  torchvision's and upstream's names), `trunks` (their variables: ImageNet resnet18, fresh, or BatchNorm
  calibrated on the data);
- inputs: `decode` (PyAV: one frame and one waveform per 1 s clip; synthetic test videos), `frames` (image
  preprocessing), `audio` (log-mel spectrograms);
- extraction (`l2l-extract`): `labels` (the labels CSV), `manifest` (``extract.json``: a rerun's settings
  compared), `extract` (decode ahead, jitted networks, per-video ``.npy`` files);
- the fusion net (`l2l-finetune`): `finetune` (the one fit of the fusion net + classifier, the imageAudio
  features it writes);
- distillation (`l2l-distill`): `clip_cache` (decoded clips cached once, memory-mapped), `teacher` (teacher
  logits, or features and a linear head), `distill_step` (the end-to-end student, its losses and jitted step),
  `distill` (the training: batches, epochs, checkpoints), `distilled` (its output folder, checksummed);
- `checks`: value checks the video programs share.

Which settings are upstream's and which are ours is said in each module's docstring: the networks and their
initialisation are upstream's (`models/networks.py`); one row per 1 s clip, the frame preprocessing and the
spectrogram settings are ours (upstream never published them), each a parameter. This package imports nothing;
import each name from its module.
"""
