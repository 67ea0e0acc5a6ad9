"""Decoding a video file into what the clip networks take: one RGB frame and one mono waveform per clip.

PyAV (FFmpeg) reads any container and codec FFmpeg reads (mp4, mkv, webm, avi, mov, ...), in one pass over the
file (video and audio packets demuxed together). Clip k covers ``[k, k + 1) * clip_seconds`` of the video
stream's time line (0 = the first decoded frame), and the number of clips is ``ceil(duration / clip_seconds)``
(a last partial clip counts, as `l2l_jax.video.frames.first_frame_indices` and
`l2l_jax.video.audio.split_clips` count it); duration = last frame's time + one frame duration.

- Frame of clip k: the first decoded frame whose time is at or after the clip's start (1 ms tolerance); when
  a clip has no frame of its own (frame rate below one per clip, or a gap), the frame before it is repeated.
  Converted to RGB (uint8) at the video's own size (the size of the first frame; a later frame of another
  size is rescaled to it).
- Audio of clip k: the first audio stream, resampled to mono float32 at `sample_rate` by PyAV's
  ``AudioResampler`` (FFmpeg's swresample; channels averaged by its downmix), placed on the video's time line
  (an audio stream that starts later is preceded by silence, one that starts earlier is cut), zero-padded or
  cut to ``num_clips * clip_samples``, then one row per clip.
- No audio stream: silence (all zeros) and ``has_audio = False``.
- `DecodeError` (an `l2l_jax.errors.L2LError`) with a one-line reason for a file that cannot be opened or
  decoded, has no video stream, or holds no decodable frame (fewer than one clip).

Limits (a broken or hostile file must not turn into thousands of made-up clips or gigabytes of memory): a
video longer than `max_seconds` (by the container's duration, before decoding; by any frame's or audio
sample's time, while decoding) is refused at once; so is a video whose clip count is implausible for its
frames: more than `PLAUSIBLE_RATIO` (4) clips per clip that holds a decoded frame of its own (three frames, the
last at 1 h, would otherwise give 3,601 clips of repeated frames). The reason names the container's duration
and the frame count. Clips without a frame of their own are filled only once the clip count is accepted,
and audio beyond `max_seconds` is never kept.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from l2l_jax.errors import L2LError

TIME_TOLERANCE = 1e-3  # seconds: a frame this much before a clip's start still counts as its first frame
MAX_SECONDS = 3 * 3600.0  # default limit on a video's length (l2l-extract --max_seconds)
PLAUSIBLE_RATIO = 4  # at most this many clips per clip holding a frame of its own


class DecodeError(L2LError):
    """A video cannot be used; ``reason`` says why in a few words."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


@dataclasses.dataclass
class DecodedVideo:
    """One video, one row per clip: ``frames`` (T, H, W, 3) uint8 RGB, ``audio`` (T, clip_samples) float32."""

    path: str
    frames: np.ndarray
    audio: np.ndarray
    has_audio: bool
    fps: float
    duration: float

    @property
    def num_clips(self) -> int:
        return len(self.frames)


def _frame_time(frame, index: int, fps: float) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    return index / fps


def _rate(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _container_seconds(container) -> float | None:
    """The container's duration in seconds (None when it does not say)."""
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _describe(container_s: float | None, n_frames: int) -> str:
    said = f"the container says {container_s:.1f} s" if container_s is not None else "the container gives no duration"
    return f"{said}, {n_frames} decoded frame(s)"


def _nominal_rate(stream) -> float:
    """The stream's frame rate as FFmpeg guesses it (a container's average rate comes last: one far timestamp
    skews it); 0 when none is known."""
    for rate in (stream.guessed_rate, stream.base_rate, stream.average_rate):
        if rate and float(rate) > 0:
            return float(rate)
    return 0.0


def _frame_duration(nominal_rate: float, deltas: list[float], clip_seconds: float) -> float:
    """One frame's duration: the median gap between the first frames when there are a few, else one period
    of the nominal rate."""
    if len(deltas) >= 3:
        return float(np.median(deltas))
    if nominal_rate > 0:
        return 1.0 / nominal_rate
    return min(deltas) if deltas else clip_seconds


@dataclasses.dataclass
class _VideoTrack:
    """The video stream as it is decoded: the first frame of every clip that has one, and the frames' timing."""

    path: str
    clip_seconds: float
    max_seconds: float
    fps: float
    container_s: float | None
    picked: list[tuple[int, np.ndarray]] = dataclasses.field(default_factory=list)  # (k, first frame of clip k)
    next_clip: int = 0
    size: tuple[int, int] | None = None
    t0: float | None = None
    last_t: float = 0.0
    n_frames: int = 0
    prev_t: float | None = None
    deltas: list[float] = dataclasses.field(default_factory=list)

    def add(self, frame) -> None:
        """Takes one decoded frame; refuses one past `max_seconds`."""
        t = _frame_time(frame, self.n_frames, self.fps or 25.0)
        if self.t0 is None:
            self.t0 = t
            self.size = (frame.width, frame.height)
        t -= self.t0
        if t > self.max_seconds:
            raise DecodeError(self.path, f"a frame at {t:.1f} s is past --max_seconds {self.max_seconds:g} "
                              f"({_describe(self.container_s, self.n_frames + 1)}; broken timestamps, or "
                              "pass a larger --max_seconds)")
        if self.prev_t is not None and t > self.prev_t and len(self.deltas) < 64:
            self.deltas.append(t - self.prev_t)
        self.prev_t = t
        self.n_frames += 1
        self.last_t = max(self.last_t, t)
        # the last clip starting at or before t: this frame is its first when no earlier
        # frame was; the clips in between (no frame of their own) repeat the frame before them
        k = math.floor((t + TIME_TOLERANCE) / self.clip_seconds)
        if k >= self.next_clip:
            if (frame.width, frame.height) != self.size:
                frame = frame.reformat(width=self.size[0], height=self.size[1])
            self.picked.append((k, frame.to_ndarray(format="rgb24")))
            self.next_clip = k + 1


@dataclasses.dataclass
class _AudioTrack:
    """The audio stream as it is decoded: mono float32 chunks at the resampler's rate, up to `max_samples`."""

    resampler: object
    max_samples: int
    chunks: list[np.ndarray] = dataclasses.field(default_factory=list)
    kept_samples: int = 0
    t0: float | None = None

    def add(self, frame) -> None:
        """Takes one decoded audio frame (the first one gives the stream's start time)."""
        if self.t0 is None:
            self.t0 = _frame_time(frame, 0, 1.0) if frame.pts is not None else None
            self.t0 = 0.0 if self.t0 is None else self.t0
        self._keep(self.resampler.resample(frame))

    def flush(self) -> None:
        """The resampler's last samples, at the end of the stream."""
        self._keep(self.resampler.resample(None))

    def _keep(self, outs) -> None:
        for out in outs:
            if self.kept_samples < self.max_samples:  # audio past max_seconds is never used
                self.chunks.append(out.to_ndarray().reshape(-1))
                self.kept_samples += self.chunks[-1].size


def _open(path: str):
    """The PyAV container of `path`; a file that cannot be opened is a `DecodeError`."""
    import av

    try:
        return av.open(path)
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
        raise DecodeError(path, f"cannot open ({_why(e)})") from None


def _demux(container, path: str, *, clip_seconds: float, sample_rate: int, threads: bool,
           max_seconds: float, track: Callable[..., _VideoTrack] = _VideoTrack
           ) -> tuple[_VideoTrack, _AudioTrack | None, float]:
    """One pass over the open `container`'s first video and audio streams: (video track, audio track or None,
    the nominal frame rate). A video longer than `max_seconds` is refused as soon as that is known. `track`
    makes the video track from (path, clip_seconds, max_seconds, fps, container seconds): a subclass of
    `_VideoTrack` may keep more of each frame in the same pass."""
    import av

    if not container.streams.video:
        raise DecodeError(path, "no video stream")
    container_s = _container_seconds(container)
    if container_s is not None and container_s > max_seconds:
        raise DecodeError(path, f"longer than --max_seconds {max_seconds:g} ({_describe(container_s, 0)}; "
                          "pass a larger --max_seconds to extract it)")
    max_samples = int(math.ceil(max_seconds * sample_rate)) + sample_rate
    vstream = container.streams.video[0]
    if threads:
        vstream.thread_type = "AUTO"
    astream = container.streams.audio[0] if container.streams.audio else None
    fps, nominal_rate = _rate(vstream), _nominal_rate(vstream)  # read while the container is open
    video = track(path, clip_seconds, max_seconds, fps, container_s)
    sound = (_AudioTrack(av.AudioResampler(format="flt", layout="mono", rate=sample_rate), max_samples)
             if astream is not None else None)
    streams = [vstream] + ([astream] if astream is not None else [])
    for packet in container.demux(streams):
        for frame in packet.decode():
            if packet.stream is vstream:
                video.add(frame)
            else:
                sound.add(frame)
    if sound is not None:
        sound.flush()
    return video, sound, nominal_rate


def _clip_count(path: str, video: _VideoTrack, duration: float, clip_seconds: float, max_seconds: float) -> int:
    """The number of clips of a video of `duration` seconds; refused past `max_seconds` or when implausible for
    the clips that hold a frame of their own (broken timestamps)."""
    num_clips = max(1, math.ceil(duration / clip_seconds - 1e-6))
    if num_clips * clip_seconds > max_seconds + clip_seconds:
        raise DecodeError(path, f"{num_clips} clips are past --max_seconds {max_seconds:g} "
                          f"({_describe(video.container_s, video.n_frames)}; pass a larger --max_seconds)")
    own = sum(1 for k, _ in video.picked if k < num_clips)
    if num_clips > PLAUSIBLE_RATIO * max(own, 1):
        raise DecodeError(path, f"implausible timing: {num_clips} clips of {clip_seconds:g} s, but only {own} hold "
                          f"a frame of their own ({_describe(video.container_s, video.n_frames)}, the last frame at "
                          f"{video.last_t:.1f} s); its timestamps are probably broken")
    return num_clips


def _frame_rows(picked: list[tuple[int, np.ndarray]], num_clips: int) -> np.ndarray:
    """(num_clips, H, W, 3): each clip's first frame; a clip without one repeats the frame before it."""
    frames = np.empty((num_clips, *picked[0][1].shape), np.uint8)
    for (k, rgb), (end, _) in zip(picked, [*picked[1:], (num_clips, None)], strict=True):
        frames[k:end] = rgb  # past num_clips: cut
    return frames


def _audio_rows(sound: _AudioTrack | None, video_t0: float | None, num_clips: int, clip_samples: int,
                sample_rate: int) -> np.ndarray:
    """(num_clips, clip_samples): the audio placed on the video's time line (silence before a later start, an
    earlier start cut), zero-padded or cut; all silence without audio."""
    audio = np.zeros((num_clips, clip_samples), np.float32)
    if sound is not None and sound.chunks:
        wave = np.concatenate(sound.chunks).astype(np.float32, copy=False)
        offset = int(round(((sound.t0 or 0.0) - (video_t0 or 0.0)) * sample_rate))
        flat = audio.reshape(-1)
        if offset >= 0:
            n = min(len(wave), flat.size - offset)
            if n > 0:
                flat[offset:offset + n] = wave[:n]
        else:
            wave = wave[-offset:]
            n = min(len(wave), flat.size)
            flat[:n] = wave[:n]
    return audio


def decode_video(path: str | os.PathLike, *, clip_seconds: float = 1.0, sample_rate: int = 16000,
                 threads: bool = True, max_seconds: float = MAX_SECONDS) -> DecodedVideo:
    """Decode `path` (see the module docstring). `threads`: let FFmpeg decode with its own frame threads.
    `max_seconds`: the longest video accepted (a longer one is a `DecodeError`, found before the memory for
    it is taken)."""
    return decode_with_track(path, clip_seconds=clip_seconds, sample_rate=sample_rate, threads=threads,
                             max_seconds=max_seconds)[0]


def decode_with_track(path: str | os.PathLike, *, clip_seconds: float = 1.0, sample_rate: int = 16000,
                      threads: bool = True, max_seconds: float = MAX_SECONDS,
                      track: Callable[..., _VideoTrack] = _VideoTrack) -> tuple[DecodedVideo, _VideoTrack, int]:
    """`decode_video` that also returns its video track (made by `track`, see `_demux`) and the clip count,
    for callers that keep more of each frame in the same pass."""
    import av

    path = os.fspath(path)
    clip_samples = int(round(clip_seconds * sample_rate))
    container = _open(path)
    try:
        with container:
            video, sound, nominal_rate = _demux(container, path, clip_seconds=clip_seconds, sample_rate=sample_rate,
                                                threads=threads, max_seconds=max_seconds, track=track)
    except DecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, MemoryError, EOFError) as e:
        raise DecodeError(path, f"cannot decode ({_why(e)})") from None
    if video.n_frames == 0 or not video.picked:
        raise DecodeError(path, "no decodable video frame (fewer than one clip)")
    duration = video.last_t + _frame_duration(nominal_rate, video.deltas, clip_seconds)
    num_clips = _clip_count(path, video, duration, clip_seconds, max_seconds)
    frames = _frame_rows(video.picked, num_clips)
    audio = _audio_rows(sound, video.t0, num_clips, clip_samples, sample_rate)
    return DecodedVideo(path, frames, audio, sound is not None, video.fps, duration), video, num_clips


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


#: The writers' encoder options. x264's hand-written SIMD kernels (its AVX-512 ones were caught at it) can turn
#: identical frames into different bitstreams from one run to the next on a loaded machine, even with one thread
#: (decoded pixels then differ by tens of levels); its C code (``asm=0``) gives one bitstream per input. Videos
#: here are tiny, so the C code's speed does not matter. ``bitexact`` keeps FFmpeg's own MPEG-4 encoder on its
#: reproducible code paths.
ENCODER_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"threads": "1", "x264-params": "asm=0"},
    "mpeg4": {"threads": "1", "flags": "+bitexact"},
}


def write_test_video(path: str | os.PathLike, *, seconds: float = 3.0, fps: int = 8, width: int = 64,
                     height: int = 48, audio: str | None = "aac", sample_rate: int = 22050, seed: int = 0,
                     draw=None, sound=None) -> None:
    """A small video for tests and the demo: H.264 (or MPEG-4 Part 2 when no H.264 encoder exists) frames
    from ``draw(i, t) -> (height, width, 3) uint8`` (default: noise with a moving square), and an audio track
    (``"aac"``, ``"pcm"`` or None) from ``sound(t) -> float32 samples in [-1, 1]`` at `sample_rate` (default:
    a tone). Container from the suffix (.mp4, .mkv, .mov, ...). The same arguments give the same file, byte for
    byte, whatever else the machine is doing (`ENCODER_OPTIONS`)."""
    import av

    rng = np.random.default_rng(seed)
    n = int(round(seconds * fps))
    if draw is None:
        base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)

        def draw(i, t):
            img = base.copy()
            x = int(i * 3) % max(1, width - 8)
            img[8:16, x:x + 8] = 255
            return img
    if sound is None:
        freq = 220.0 * (1 + seed % 4)

        def sound(t):
            return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    with av.open(os.fspath(path), mode="w") as out:
        # the same frames give the same file, byte for byte (seeded test data): explicit timestamps, one encoder
        # thread, and x264's portable C code (ENCODER_OPTIONS)
        try:
            vs = out.add_stream("libx264", rate=fps, options=ENCODER_OPTIONS["libx264"])
        except (av.FFmpegError, ValueError):
            vs = out.add_stream("mpeg4", rate=fps, options=ENCODER_OPTIONS["mpeg4"])
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        as_ = None
        if audio is not None:
            codec = {"aac": "aac", "pcm": "pcm_s16le"}[audio]
            as_ = out.add_stream(codec, rate=sample_rate)
            as_.layout = "mono"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(draw(i, i / fps)), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if as_ is not None:
            total = int(round(seconds * sample_rate))
            block = 1024
            fmt = "fltp" if audio == "aac" else "s16"
            for start in range(0, total, block):
                t = (np.arange(start, min(total, start + block)) / sample_rate).astype(np.float64)
                x = np.clip(sound(t), -1, 1).astype(np.float32)
                data = x[None, :] if fmt == "fltp" else (x * 32767).astype(np.int16)[None, :]
                af = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
                af.sample_rate = sample_rate
                af.pts = start
                af.time_base = Fraction(1, sample_rate)
                for p in as_.encode(af):
                    out.mux(p)
            for p in as_.encode():
                out.mux(p)


PALETTE = ((255, 40, 40), (40, 220, 40), (60, 90, 255), (250, 220, 30), (230, 60, 230), (40, 220, 230),
           (255, 140, 0), (150, 80, 255))


#: The filler footage's backgrounds (left and right colour of a gradient: a darker and a lighter shade of one
#: muted hue, so that a mirrored scene is still told from the others), shared by all classes.
SCENES = (((50, 60, 100), (90, 100, 140)), ((100, 45, 45), (140, 80, 70)), ((55, 85, 50), (95, 125, 80)),
          ((80, 80, 80), (130, 130, 130)))
TONE_RAMP = 0.1  # seconds: the class's tone fades in and out this fast at the segment's ends


def synthetic_clip_plan(label: int, num_classes: int, seconds: int, seed: int) -> dict:
    """Where `write_synthetic_video` puts things (seconds on the clip grid): ``segment`` (start, stop) of the
    class's shape and sound, ``distractor`` (start, stop, other class) shown silently, or None, and ``scene``
    (the index into `SCENES` of the background)."""
    rng = np.random.default_rng(seed)
    length = int(rng.integers(2, 4))
    start = int(rng.integers(0, seconds - length + 1))
    scene = int(np.random.default_rng(seed + 7919).integers(len(SCENES)))
    plan = {"label": label, "segment": (start, start + length), "distractor": None, "scene": scene}
    free = [t for t in range(seconds - 1) if t + 2 <= start or t >= start + length + 1]
    if free and num_classes > 1:
        d = int(rng.choice(free))
        other = int((label + rng.integers(1, num_classes)) % num_classes)
        plan["distractor"] = (d, d + 2, other)
    return plan


def write_synthetic_video(path: str | os.PathLike, label: int, num_classes: int, *, seconds: int = 12,
                          fps: int = 8, width: int = 64, height: int = 48, seed: int = 0) -> dict:
    """A demo video of class `label` (`l2l-demo --preset videos` and ``distill``): filler footage (a drifting
    colour gradient of one of the `SCENES`, shared by all classes, with noise; a quiet hum and noise on the sound
    track), one class-specific segment of 2-3 s (a moving shape of the class's colour and kind, and the class's
    tone, heard exactly while the shape is seen), and a silent distractor (another class's shape, no tone)
    elsewhere. H.264 (or MPEG-4) + AAC. Returns `synthetic_clip_plan`; the same arguments give the same file,
    byte for byte."""
    plan = synthetic_clip_plan(label, num_classes, seconds, seed)
    rng = np.random.default_rng(seed + 7919)
    rng.integers(len(SCENES))  # the plan's draw of the scene: the frames' noise follows it in this stream
    k = plan["scene"]  # the background: one of a few scenes shared by all classes
    scene, hum = np.array(SCENES[k], np.float32), 90.0 + 30.0 * k
    yy, xx = np.mgrid[0:height, 0:width]
    grad = (xx / max(width - 1, 1))[..., None]

    def shape(img, cls, t, t0, t1):
        colour = np.array(PALETTE[cls % len(PALETTE)], np.float32)
        u = (t - t0) / max(t1 - t0, 1e-6)
        cx, cy, r = 8 + u * (width - 16), height / 2 + (height / 4) * np.sin(2 * np.pi * u), max(4, height // 6)
        kind = (cls // len(PALETTE) + cls) % 4
        if kind == 0:
            m = (abs(xx - cx) < r) & (abs(yy - cy) < r)
        elif kind == 1:
            m = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        elif kind == 2:
            m = (abs(yy - cy) < r / 2) & (abs(xx - cx) < 2 * r)
        else:
            m = (abs(xx - cx) < r / 2) & (abs(yy - cy) < 2 * r)
        img[m] = colour

    def draw(i, t):
        drift = 0.5 + 0.5 * np.sin(2 * np.pi * t / seconds)
        img = (scene[0] * (1 - grad) + scene[1] * grad) * (0.7 + 0.3 * drift)
        img = img + rng.normal(0, 6, img.shape)
        s0, s1 = plan["segment"]
        if s0 <= t < s1:
            shape(img, label, t, s0, s1)
        if plan["distractor"] is not None:
            d0, d1, other = plan["distractor"]
            if d0 <= t < d1:
                shape(img, other, t, d0, d1)
        return np.clip(img, 0, 255).astype(np.uint8)

    s0, s1 = plan["segment"]
    tone = 330.0 * 2 ** (label * 5 / 12)  # the class's note: a fourth apart

    noise_rng = np.random.default_rng(seed + 104729)

    def sound(t):
        # the tone exactly while the shape is seen, faded in and out over TONE_RAMP seconds inside the segment
        env = np.clip(np.minimum(t - s0, s1 - t) / TONE_RAMP, 0.0, 1.0)
        env = 0.5 - 0.5 * np.cos(np.pi * env)
        x = 0.05 * np.sin(2 * np.pi * hum * t) + 0.03 * noise_rng.standard_normal(t.shape)
        return (x + 0.4 * env * np.sin(2 * np.pi * tone * t)).astype(np.float32)

    write_test_video(path, seconds=seconds, fps=fps, width=width, height=height, audio="aac", sample_rate=16000,
                     seed=seed, draw=draw, sound=sound)
    return plan


__all__ = ["ENCODER_OPTIONS", "PALETTE", "SCENES", "DecodeError", "DecodedVideo", "decode_video", "synthetic_clip_plan",
           "write_synthetic_video", "write_test_video"]
