"""Clip features from raw video: upstream's image and audio networks (`networks`), their PyTorch weights
(`convert`), and the inputs they take (`frames`: images, `audio`: log-mel spectrograms).

Which settings are upstream's and which are ours is said in each module's docstring: the networks and their
initialisation are upstream's (`models/networks.py`); one row per 1 s clip, the frame preprocessing and the
spectrogram settings are ours (upstream never published them), each a parameter.
"""
