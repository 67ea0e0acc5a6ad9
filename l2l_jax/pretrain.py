"""A short jitted fit of the fusion net + classifier on clip-level labels (the demo's step 2).

Upstream starts the preview policy from a released, fine-tuned image-audio network
(`ImageAudioNet_ActivityNet.pth`). For data that has no such network (the embedded synthetic dataset, or
features made by `l2l-extract`), one is fitted: every sampled clip of a training video gets the video's label,
and ImageAudioClassifier (cat(image, audio) -> fc1 -> ReLU -> fc2 -> classifier) is trained with Adam on the
clips' cross entropy. The one implementation lives in `l2l_jax.video.finetune` (`l2l-finetune`); this module
re-exports it under its historical name.
"""

from __future__ import annotations

from l2l_jax.video.finetune import fit_imageaudionet, sample_clips

__all__ = ["fit_imageaudionet", "sample_clips"]
