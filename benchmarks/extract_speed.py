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

With ``--video_model ARCH`` (r3d_18, mc3_18, r2plus1d_18) it times the video model of ``l2l-extract
--video_model`` instead, network only, on the same --clips clips (16 x 112 x 112, values in [0, 1], drawn once):

- ours: `l2l_jax.video.video_clips.VideoExtractor`, the jitted, data-parallel forward l2l-extract runs
  (Kinetics normalisation inside it; features and logits), in each of --precisions (compiled in a warm-up
  call, not timed);
- PyTorch: tests/torch_videoresnet_reference.py's network of the same architecture (torchvision's module
  names), eval mode, ``inference_mode``, all torch threads, on the same clips in NCTHW, normalised the same way;
  its features (``avgpool``) and logits both computed, as ours are.

Same weights: torch's, random with BatchNorm statistics and ``fc`` randomised (the reference's `randomize`), put
into ours by `l2l_jax.video.video_convert.from_state_dict`; the outputs are compared once (largest difference
printed). Each of --rounds rounds times --steps forwards of each, ours and PyTorch alternating in the same
process; the figures are medians. `benchmarks/machine_peak.py` is printed beside them unless --no_peak.

    python benchmarks/extract_speed.py --video_model r2plus1d_18 [--clips 8] [--steps 2] [--rounds 3]
        [--precisions exact fast]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import os
import statistics
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
import torch_videoresnet_reference as tvrn  # noqa: E402

from l2l_jax import numerics  # noqa: E402
from l2l_jax.video import audio as A  # noqa: E402
from l2l_jax.video import decode as D  # noqa: E402
from l2l_jax.video import extract as X  # noqa: E402
from l2l_jax.video import frames as F  # noqa: E402
from l2l_jax.video import video_clips as VCL  # noqa: E402
from l2l_jax.video import video_convert as VCV  # noqa: E402
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


# ------------------------------------------------------------------------------------------ video model


def video_weights(arch: str, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """The reference network of `arch` (random, BatchNorm and ``fc`` randomised, eval mode) and the same weights
    as our Flax variables."""
    torch.manual_seed(seed)
    net = tvrn.ARCHS[arch]()
    tvrn.randomize(net, torch.Generator().manual_seed(seed))
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    return net.eval(), VCV.from_state_dict(sd, arch)


class TorchVideo:
    """The PyTorch reference forward: normalise, NTHWC -> NCTHW, features and logits, ``inference_mode``."""

    def __init__(self, net: torch.nn.Module, cfg: VCL.ClipConfig = VCL.DEFAULT):
        self.net = net
        self.mean = torch.tensor(cfg.mean).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(cfg.std).view(1, 3, 1, 1, 1)

    def __call__(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            x = (torch.from_numpy(clips).permute(0, 4, 1, 2, 3) - self.mean) / self.std
            features = self.net.features(x)
            return features.numpy(), self.net.fc(features).numpy()


def ours_video(ex: VCL.VideoExtractor, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """l2l-extract's video forward on one batch, results on the host."""
    features, logits = ex(clips)
    return np.asarray(features), np.asarray(logits)


def video_clips_per_s(fn, clips: np.ndarray, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn(clips)
    return steps * len(clips) / (time.perf_counter() - t0)


def run_video(args: argparse.Namespace) -> int:
    """--video_model: our jitted video forward (each precision) against the PyTorch reference, rounds
    alternating in this process; medians."""
    import jax

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import step_cost

    cfg = VCL.DEFAULT
    net, variables = video_weights(args.video_model)
    model = VCL.VideoModel(args.video_model, variables, net.fc.out_features, f"{args.video_model} random", None)
    clips = np.random.default_rng(0).random((args.clips, cfg.frames, cfg.crop, cfg.crop, 3), dtype=np.float32)
    theirs = TorchVideo(net, cfg)
    print(f"{args.video_model}, {args.clips} clips of {cfg.frames} x {cfg.crop} x {cfg.crop}; jax {jax.__version__} "
          f"on {jax.devices()[0].platform} x{len(jax.devices())}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs", flush=True)
    t = time.perf_counter()
    ref_features, ref_logits = theirs(clips)  # warm-up, and the reference outputs
    print(f"PyTorch warm-up forward {time.perf_counter() - t:.1f} s", flush=True)
    ours = {}
    for precision in args.precisions:
        ex = VCL.VideoExtractor(model, batch_size=args.clips, cfg=cfg, precision=precision)
        t = time.perf_counter()
        features, logits = ours_video(ex, clips)  # compiles
        gflop = step_cost.step_flops(ex._forward, (ex.variables, clips)) / 1e9
        diff = max(float(np.abs(features - ref_features).max()), float(np.abs(logits - ref_logits).max()))
        print(f"ours {precision}: compile + first forward {time.perf_counter() - t:.1f} s, {gflop:.0f} GFLOP per "
              f"batch, largest difference to PyTorch {diff:.2e}", flush=True)
        ours[precision] = (functools.partial(ours_video, ex), gflop)
    rows: dict[str, list[float]] = {name: [] for name in [*ours, "torch"]}
    for r in range(args.rounds):
        line = []
        for precision, (fn, _) in ours.items():
            rows[precision].append(video_clips_per_s(fn, clips, args.steps))
            line.append(f"ours {precision} {rows[precision][-1]:.3f}")
        rows["torch"].append(video_clips_per_s(theirs, clips, args.steps))
        line.append(f"PyTorch {rows['torch'][-1]:.3f}")
        print(f"round {r + 1}: " + ", ".join(line) + " clips/s", flush=True)
    ref = statistics.median(rows["torch"])
    gflop_clip = next(iter(ours.values()))[1] / args.clips
    print(f"\n{args.video_model}, batch {args.clips} clips of {cfg.frames} x {cfg.crop} x {cfg.crop}, "
          f"{gflop_clip:.1f} GFLOP per clip; medians of {args.rounds} rounds of {args.steps} forwards\n")
    print("| forward | clips/s | GFLOP/s | vs PyTorch (median of rounds) |")
    print("|---|---|---|---|")
    print(f"| PyTorch eager (reference, inference_mode) | {ref:.3f} | {ref * gflop_clip:.0f} | 1.00x |")
    for precision in ours:
        med = statistics.median(rows[precision])
        ratio = statistics.median(a / b for a, b in zip(rows[precision], rows["torch"], strict=True))
        print(f"| ours, l2l-extract's jitted forward, {precision} | {med:.3f} | {med * gflop_clip:.0f} | "
              f"{ratio:.2f}x |")
    if not args.no_peak:
        import machine_peak

        print("\nthis machine's ceilings (benchmarks/machine_peak.py):", flush=True)
        machine_peak.main(["--repeats", "5"])
    return 0


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
    p.add_argument("--video_model", choices=VCL.VIDEO_MODELS, default=None,
                   help="time this video model's forward (l2l-extract --video_model) against PyTorch instead")
    p.add_argument("--clips", type=int, default=8, help="--video_model: clips per forward")
    p.add_argument("--steps", type=int, default=2, help="--video_model: forwards per round")
    p.add_argument("--rounds", type=int, default=3, help="--video_model: rounds, ours and PyTorch alternating")
    p.add_argument("--precisions", nargs="+", choices=numerics.PRECISIONS, default=["exact", "fast"],
                   help="--video_model: our precisions")
    p.add_argument("--no_peak", action="store_true", help="--video_model: skip machine_peak.py's figures")
    args = p.parse_args(argv)
    if args.video_model:
        return run_video(args)
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
