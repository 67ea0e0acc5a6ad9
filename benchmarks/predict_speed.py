"""`l2l-predict`'s compute per minute of video, stage by stage: decode, networks, policy.

    python benchmarks/predict_speed.py [--videos 4] [--seconds 30] [--width 320] [--height 240] [--fps 25]
        [--frame_size 256] [--crop 224] [--network_batch 64] [--batch_size 16] [--episode_length 10]
        [--precisions exact fast] [--repeats 3] [--no_peak]

On generated videos (`l2l_jax.video.decode.write_synthetic_video`, cached in runs/predict_bench/), each stage as
l2l-predict runs it, timed on its own so the numbers add up to the compute a minute of video costs:

- decode: `decode_video` of every file, one thread (l2l-predict spreads files over --workers threads);
- networks: l2l-extract's `Extractor` (VisualNet + AudioNet, random variables: the cost does not depend on
  the values) on the decoded clips in batches of --network_batch, after one compiling batch of each shape;
- policy: `l2l_jax.prediction.policy.Policy` (the evaluator without baselines) on the features, a freshly
  initialised two-modality model trained as README's recipe makes it (--mean_feature_as_start
  --with_replacement, E = --episode_length), after a first compiling run.

Seconds per minute of video = stage seconds / (clips / 60) (1 s clips); best of --repeats. Compilation is
reported apart. `benchmarks/machine_peak.py`'s figures are printed beside them unless --no_peak.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import jax
import numpy as np

from l2l_jax import config, numerics
from l2l_jax.model import PreviewConfig, init_variables
from l2l_jax.outputs import atomic_save
from l2l_jax.prediction.features import Clock
from l2l_jax.prediction.policy import Policy
from l2l_jax.programs import flags as program_flags
from l2l_jax.video.decode import decode_video, write_synthetic_video
from l2l_jax.video.extract import Extractor
from l2l_jax.video.manifest import AUDIO_DIR, IMAGE_DIR
from l2l_jax.video.trunks import fresh_variables

ROOT = Path(__file__).resolve().parent.parent
C = 200


def make_videos(folder: Path, n: int, seconds: int, fps: int, width: int, height: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"v{i}_{seconds}s_{width}x{height}_{fps}.mp4"
        if not p.is_file():
            write_synthetic_video(p, i % 4, 4, seconds=seconds, fps=fps, width=width, height=height, seed=i)
        out.append(p)
    return out


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def time_networks(x: Extractor, frames: np.ndarray, waves: np.ndarray, repeats: int) -> tuple[float, float]:
    """(compile + first batch seconds, best seconds over all clips) of the networks in full batches."""
    b = x.batch_size
    n = len(frames)
    pad = -n % b

    def padded(a):
        return np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a

    f, w = padded(frames), padded(waves)
    t0 = time.perf_counter()
    jax.block_until_ready((x.images(f[:b]), x.audio(w[:b])))
    first = time.perf_counter() - t0

    def run():
        outs = []
        for s in range(0, len(f), b):
            outs += [x.images(f[s:s + b]), x.audio(w[s:s + b])]
        jax.block_until_ready(outs)

    return first, best(run, repeats)


def policy_settings(args: argparse.Namespace, precision: str) -> config.Settings:
    cfg = program_flags.resolve("eval", ["--num_classes", str(C), "--episode_length", str(args.episode_length),
                                         "--with_replacement", "--mean_feature_as_start", "--batch_size",
                                         str(args.batch_size), "--precision", precision])
    return config.settings(cfg, "eval")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT / "runs" / "predict_bench" / "videos"))
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--frame_size", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--network_batch", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16, help="videos per policy batch")
    p.add_argument("--episode_length", type=int, default=10)
    p.add_argument("--precisions", nargs="+", choices=numerics.PRECISIONS, default=["exact", "fast"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no_peak", action="store_true")
    args = p.parse_args(argv)
    paths = make_videos(Path(args.data), args.videos, args.seconds, args.fps, args.width, args.height)
    print(f"{jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}; {len(paths)} videos, "
          f"{args.seconds} s each, {args.width}x{args.height} at {args.fps} fps; frames {args.frame_size}/"
          f"{args.crop}; E = {args.episode_length}", flush=True)
    decoded = []
    decode_s = best(lambda: decoded.__setitem__(slice(None), [decode_video(q) for q in paths]), args.repeats)
    clips = sum(v.num_clips for v in decoded)
    per_min = clips / 60.0
    frames = np.concatenate([v.frames for v in decoded])
    waves = np.concatenate([v.audio for v in decoded])
    lengths = [v.num_clips for v in decoded]
    print(f"{'stage':10s} {'precision':9s} {'s per min of video':>19s} {'compile s':>10s}")
    print(f"{'decode':10s} {'-':9s} {decode_s / per_min:19.3f} {'-':>10s}", flush=True)
    visual, audio = fresh_variables("visualnet", 0), fresh_variables("audionet", 1)
    for precision in args.precisions:
        x = Extractor(visual, audio, batch_size=args.network_batch, frame_size=args.frame_size, crop=args.crop,
                      precision=precision)
        first, net_s = time_networks(x, frames, waves, args.repeats)
        print(f"{'networks':10s} {precision:9s} {net_s / per_min:19.3f} {first:10.1f}", flush=True)
        names = [f"{i:032x}" for i in range(len(paths))]  # as l2l-predict names them: hex content digests
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / IMAGE_DIR).mkdir()
            (root / AUDIO_DIR).mkdir()
            rng = np.random.default_rng(0)
            for name, t in zip(names, lengths, strict=True):
                atomic_save(root / IMAGE_DIR / f"{name}.npy", rng.standard_normal((t, 512)).astype(np.float32))
                atomic_save(root / AUDIO_DIR / f"{name}.npy", rng.standard_normal((t, 512)).astype(np.float32))
            settings = policy_settings(args, precision)
            variables = init_variables(PreviewConfig(num_classes=C, episode_length=args.episode_length,
                                                     mean_feature_as_start=True, with_replacement=True),
                                       "two", jax.random.key(0))
            pol = Policy(settings, variables)
            clock = Clock()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pol.run(root, names, lengths, clock, progress=False)
                compile_s = clock.compile_s
                runs = []
                for _ in range(args.repeats):
                    c = Clock()
                    pol.run(root, names, lengths, c, progress=False)
                    runs.append(c.policy_s)
        print(f"{'policy':10s} {precision:9s} {min(runs) / per_min:19.3f} {compile_s:10.1f}", flush=True)
    if not args.no_peak:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import machine_peak

        print("\nthis machine's ceilings (benchmarks/machine_peak.py):", flush=True)
        machine_peak.main(["--repeats", "5"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
