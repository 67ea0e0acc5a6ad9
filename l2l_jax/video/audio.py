"""Log-mel spectrograms in JAX (jit-able, batched): AudioNet's input.

Upstream never published how its audio clips became spectrograms, so every setting here is **ours**, each a
field of `LogMelConfig`:

- mono audio at 16 kHz, one row per 1 s clip (16000 samples -> 101 frames with the defaults);
- STFT: periodic Hann window of 400 samples (25 ms), hop 160 (10 ms), ``n_fft`` 512 (the window is centred in
  the 512-point frame, as librosa's ``pad_center`` does; 257 frequency bins, 31.25 Hz apart), center padding of
  ``n_fft // 2`` samples at both ends with zeros (librosa >= 0.10's default ``pad_mode="constant"``;
  ``"reflect"`` is available);
- power spectrum |X|^2;
- mel filterbank as librosa's default (``htk=False``, ``norm="slaney"``): 40 bins from 0 Hz to sr / 2 (33..48
  bins reduce to the 3 frequency positions AudioNet needs);
- ``log(mel + 1e-6)`` (natural log; no per-clip reference or clipping, unlike librosa's ``power_to_db``).

This equals ``np.log(librosa.feature.melspectrogram(y=y, sr=16000, n_fft=512, hop_length=160, win_length=400,
window="hann", center=True, pad_mode="constant", power=2.0, n_mels=40, htk=False, norm="slaney") + 1e-6).T``
(tests/test_video_networks.py checks it, and ``n_fft=400``, within 1e-4 absolute on the log scale).

Output layout: (B, T, n_mels), time first, the layout `l2l_jax.video.networks.AudioNet` takes.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LogMelConfig:
    """The spectrogram's settings (all ours; see the module docstring)."""

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 40
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate / 2
    center: bool = True
    pad_mode: str = "constant"  # "constant" (zeros, librosa's default) or "reflect"
    log_offset: float = 1e-6
    clip_seconds: float = 1.0

    def __post_init__(self):
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if self.pad_mode not in ("constant", "reflect"):
            raise ValueError(f"pad_mode must be 'constant' or 'reflect', not {self.pad_mode!r}")
        if self.n_mels < 1 or self.hop_length < 1:
            raise ValueError("n_mels and hop_length must be positive")

    @property
    def clip_samples(self) -> int:
        """Samples in one clip (16000 for 1 s at 16 kHz)."""
        return int(round(self.clip_seconds * self.sample_rate))


DEFAULT = LogMelConfig()


def num_frames(num_samples: int, cfg: LogMelConfig = DEFAULT) -> int:
    """Frames of a signal of `num_samples` (librosa's count: 1 + n // hop when centred)."""
    if cfg.center:
        return 1 + num_samples // cfg.hop_length
    if num_samples < cfg.n_fft:
        raise ValueError(f"{num_samples} samples are fewer than n_fft = {cfg.n_fft} (center=False)")
    return 1 + (num_samples - cfg.n_fft) // cfg.hop_length


def hann_window(cfg: LogMelConfig = DEFAULT) -> np.ndarray:
    """Periodic Hann window of ``win_length``, zero-padded to ``n_fft`` at both ends (centred), float64."""
    n = cfg.win_length
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    left = (cfg.n_fft - n) // 2
    return np.pad(w, (left, cfg.n_fft - n - left))


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, np.log(6.4) / 27.0
    mels = f / f_sp
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=16)
def _mel_filterbank(cfg: LogMelConfig) -> np.ndarray:
    fmax = cfg.sample_rate / 2.0 if cfg.fmax is None else float(cfg.fmax)
    fft_freqs = np.fft.rfftfreq(cfg.n_fft, 1.0 / cfg.sample_rate)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(fmax), cfg.n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    weights = np.zeros((cfg.n_mels, fft_freqs.size), np.float32)
    for i in range(cfg.n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:cfg.n_mels + 2] - mel_f[:cfg.n_mels]))[:, None]  # Slaney: equal area
    weights.setflags(write=False)
    return weights


def mel_filterbank(cfg: LogMelConfig = DEFAULT) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32: librosa.filters.mel(htk=False, norm="slaney") for `cfg`."""
    return _mel_filterbank(cfg).copy()


def power_spectrogram(waveforms: Array, cfg: LogMelConfig = DEFAULT) -> Array:
    """|STFT|^2 of (B, N) (or (N,)) float waveforms -> (B, T, n_fft // 2 + 1) float32."""
    x = jnp.asarray(waveforms, jnp.float32)
    t = num_frames(x.shape[-1], cfg)
    if cfg.center:
        pad = cfg.n_fft // 2
        if cfg.pad_mode == "reflect" and x.shape[-1] <= pad:
            raise ValueError(f"reflect padding needs more than {pad} samples; got {x.shape[-1]}")
        widths = [(0, 0)] * (x.ndim - 1) + [(pad, pad)]
        x = jnp.pad(x, widths, mode=cfg.pad_mode)
    idx = np.arange(t)[:, None] * cfg.hop_length + np.arange(cfg.n_fft)[None, :]
    frames = x[..., idx] * jnp.asarray(hann_window(cfg), jnp.float32)  # (..., T, n_fft)
    spec = jnp.fft.rfft(frames, n=cfg.n_fft, axis=-1)
    return jnp.square(spec.real) + jnp.square(spec.imag)


def log_mel_spectrogram(waveforms: Array, cfg: LogMelConfig = DEFAULT) -> Array:
    """(B, N) (or (N,)) mono waveforms at ``cfg.sample_rate`` -> (B, T, n_mels) float32 ``log(mel + offset)``.

    Jit-able (`cfg` is static: ``jax.jit(log_mel_spectrogram, static_argnums=1)``), batched over any leading
    axes. T = 1 + N // hop (101 for a 1 s clip with the defaults)."""
    power = power_spectrogram(waveforms, cfg)
    mel = jnp.einsum("...tf,mf->...tm", power, jnp.asarray(_mel_filterbank(cfg)),
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.log(mel + cfg.log_offset)


def split_clips(waveform: np.ndarray, cfg: LogMelConfig = DEFAULT) -> np.ndarray:
    """A mono waveform (N,) -> (num_clips, clip_samples): consecutive clips, the last partial one zero-padded
    (none when N is 0). One row per clip, the rows `log_mel_spectrogram` takes."""
    waveform = np.asarray(waveform, np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"split_clips takes a mono waveform (N,); got shape {waveform.shape}")
    size = cfg.clip_samples
    n = -(-waveform.size // size)
    out = np.zeros((n, size), np.float32)
    out.reshape(-1)[:waveform.size] = waveform
    return out


__all__ = ["DEFAULT", "LogMelConfig", "hann_window", "log_mel_spectrogram", "mel_filterbank", "num_frames",
           "power_spectrogram", "split_clips"]
