"""Clip-feature extraction speed, clips/s: `l2l-extract`'s pipeline vs a straightforward PyTorch + PyAV extractor.

Same videos, same networks (resnet18 VisualNet + AudioNet, random weights), same preprocessing settings (shorter
side 256, centre crop 224, ImageNet normalisation; log-mel 16 kHz, 400/160/512, 40 mel bins):

- PyTorch, video by video: PyAV decodes the video (every frame converted to RGB, the first of each second kept;
  then the audio in a second pass, resampled to mono 16 kHz), then the clips of that video go through
  ``F.interpolate(antialias=True)`` + crop + normalise + upstream's VisualNet (tests/torch_video_reference.py's
  resnet18), and ``torch.stft`` log-mel + AudioNet, eval mode, ``no_grad``, all torch threads. The decode share
  and the network share are the two phases' summed times over the wall time.
- ours (`l2l_jax.video.extract.extract`): --workers decoding threads ahead of jitted, data-parallel batches of
  --batch_size clips (compiled in a warm-up on one video first, not timed). The phases overlap, so the shares
  are each phase run alone (decode only: the same thread pool, no networks; networks only: the same batches
  from already-decoded clips) over the pipeline's wall time; they may add up to more than 100 %.

Videos: --videos synthetic videos (moving shapes on noise, a tone) of --seconds s at --fps, --width x --height,
H.264 + AAC in .mp4, written to --data (kept, reused).

    python benchmarks/extract_speed.py [--videos 8] [--seconds 8] [--width 320 --height 240] [--batch_size 32]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as TF

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import torch_video_reference as tvr  # noqa: E402

from l2l_jax.video import audio as A  # noqa: E402
from l2l_jax.video import decode as D  # noqa: E402
from l2l_jax.video import extract as X  # noqa: E402
from l2l_jax.video import frames as F  # noqa: E402
from l2l_jax.video.labels import Entry, video_name  # noqa: E402
from l2l_jax.video.trunks import fresh_variables  # noqa: E402


def make_videos(folder: Path, n: int, seconds: float, fps: int, width: int, height: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"v{i:03d}_{width}x{height}_{seconds:g}s.mp4"
        if not (folder / name).exists():
            D.write_test_video(folder / f".{name}", seconds=seconds, fps=fps, width=width, height=height,
                               audio="aac", seed=i)
            os.replace(folder / f".{name}", folder / name)
        names.append(name)
    return names


# ------------------------------------------------------------------------------------------ PyTorch baseline


def torch_decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward way: decode every frame to RGB, keep the first of each second; then the audio."""
    import av

    frames, picked = [], []
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            t = float(frame.time)
            if t >= len(picked) - 1e-3:
                picked.append(rgb)
            frames.append(rgb)
    wave = []
    with av.open(str(path)) as c:
        if c.streams.audio:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
            for frame in c.decode(audio=0):
                wave += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            wave += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    n = len(picked)
    audio = np.zeros(n * 16000, np.float32)
    if wave:
        w = np.concatenate(wave)[:audio.size]
        audio[:len(w)] = w
    return np.stack(picked), audio.reshape(n, 16000)


class TorchNets:
    def __init__(self):
        torch.manual_seed(0)
        self.visual = tvr.VisualNet(tvr.ResNet18()).eval()
        self.audio = tvr.AudioNet(tvr.ResNet18()).eval()
        cfg = A.DEFAULT
        self.mel = torch.from_numpy(A.mel_filterbank(cfg))
        self.window = torch.from_numpy(A.hann_window(cfg).astype(np.float32))
        self.mean = torch.tensor(F.IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(F.IMAGENET_STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, waves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[2:]
        nh, nw = F.resized_size(h, w, 256)
        x = TF.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = F.center_crop_offsets(nh, nw, 224)
        x = (x[:, :, top:top + 224, left:left + 224] - self.mean) / self.std
        image = self.visual(x)
        spec = torch.stft(torch.from_numpy(waves), n_fft=512, hop_length=160, window=self.window, center=True,
                          pad_mode="constant", return_complex=True).abs() ** 2  # (B, 257, T)
        logmel = torch.log(torch.einsum("mf,bft->btm", self.mel, spec) + 1e-6)
        audio = self.audio(logmel[:, None])
        return image.numpy(), audio.numpy()


def run_torch(folder: Path, names: list[str]) -> dict:
    nets = TorchNets()
    nets(np.zeros((1, 240, 320, 3), np.uint8), np.zeros((1, 16000), np.float32))  # warm-up
    decode_s = net_s = 0.0
    clips = 0
    t0 = time.perf_counter()
    for name in names:
        t = time.perf_counter()
        frames, waves = torch_decode(folder / name)
        decode_s += time.perf_counter() - t
        t = time.perf_counter()
        image, audio = nets(frames, waves)
        net_s += time.perf_counter() - t
        clips += len(image)
    wall = time.perf_counter() - t0
    return {"clips": clips, "wall": wall, "decode": decode_s, "net": net_s}


# ------------------------------------------------------------------------------------------ ours


def run_ours(folder: Path, names: list[str], batch_size: int, workers: int) -> dict:
    visual, audio_vars = fresh_variables("visualnet", 0), fresh_variables("audionet", 1)
    ex = X.Extractor(visual, audio_vars, batch_size=batch_size)
    entries = [Entry(n, video_name(n), 0, "train") for n in names]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        X.extract(folder, entries[:1], Path(tmp) / "warm", ex, workers=workers, progress=False)
        compile_s = time.perf_counter() - t
        s = X.extract(folder, entries, Path(tmp) / "timed", ex, workers=workers, progress=False)
    # each phase alone
    t = time.perf_counter()
    with cf.ThreadPoolExecutor(workers) as pool:
        decoded = list(pool.map(lambda n: D.decode_video(folder / n), names))
    decode_alone = time.perf_counter() - t
    frames = np.concatenate([v.frames for v in decoded])
    waves = np.concatenate([v.audio for v in decoded])
    b = ex.batch_size
    t = time.perf_counter()
    outs = []
    for s0 in range(0, len(frames), b):
        fr, wv = frames[s0:s0 + b], waves[s0:s0 + b]
        if len(fr) < b:
            fr = np.concatenate([fr, np.zeros((b - len(fr), *fr.shape[1:]), fr.dtype)])
            wv = np.concatenate([wv, np.zeros((b - len(wv), *wv.shape[1:]), wv.dtype)])
        outs += [ex.images(fr), ex.audio(wv)]
    for o in outs:
        np.asarray(o)
    net_alone = time.perf_counter() - t
    return {"clips": s.clips, "wall": s.wall_s, "decode": decode_alone, "net": net_alone, "compile": compile_s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT / "runs" / "extract_bench" / "videos"))
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    args = p.parse_args(argv)
    import jax

    folder = Path(args.data)
    names = make_videos(folder, args.videos, args.seconds, args.fps, args.width, args.height)
    print(f"{len(names)} videos, {args.seconds:g} s, {args.width}x{args.height} @ {args.fps} fps (H.264 + AAC); "
          f"jax {jax.__version__} on {jax.devices()[0].platform} x{len(jax.devices())}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs")
    ours = run_ours(folder, names, args.batch_size, args.workers)
    ref = run_torch(folder, names)
    print()
    print("| extractor | clips | wall s | clips/s | decode share | network share |")
    print("|---|---|---|---|---|---|")
    for label, r in (("PyTorch + PyAV, video by video", ref),
                     (f"ours (l2l-extract, {args.workers} decode threads, batch {args.batch_size})", ours)):
        print(f"| {label} | {r['clips']} | {r['wall']:.2f} | {r['clips'] / r['wall']:.1f} | "
              f"{100 * r['decode'] / r['wall']:.0f}% | {100 * r['net'] / r['wall']:.0f}% |")
    print(f"\nours: compile + warm-up on one video {ours['compile']:.1f} s (not in the table); phases alone: decode "
          f"{ours['decode']:.2f} s, networks {ours['net']:.2f} s. PyTorch: decode {ref['decode']:.2f} s, "
          f"networks {ref['net']:.2f} s. Speed-up {ref['wall'] / ours['wall']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
