"""`l2l-demo`: the whole system end to end on the embedded synthetic dataset, with no downloads.

    l2l-demo --out runs/demo [--preset default|tiny] [--seed N] [--precision exact|fast] [--layout auto|dense|chunk]

Five steps, each through the program a user would run (the equivalent command line is printed before each):
1. `l2l-synth` writes the dataset to OUT/data (skipped when a complete one of the same preset and seed is there);
2. a short jitted fit of the fusion net + classifier on clip-level labels (`l2l_jax.pretrain`, the stand-in for
   upstream's released `ImageAudioNet_*.pth`), exported with `l2l-convert export` to
   OUT/ImageAudioNet_synthetic.pth and converted back with `l2l-convert imageaudionet` to OUT/imageaudionet, so
   the conversion path runs for real;
3. `l2l-train --config configs/synthetic.py` trains the preview policy from OUT/imageaudionet into OUT/train;
4. `l2l-eval` evaluates it with the baselines, writing OUT/metrics.json, OUT/clips.jsonl and OUT/plots/;
5. the last screen: policy vs uniform vs random vs all clips at E = 10, speeds, and where everything is.

`--preset videos` starts from raw video files instead (steps 1-2: `step_videos`): it writes small synthetic
videos to OUT/videos, extracts their clip features with `l2l-extract` (random networks) and fits the fusion net
with `l2l-finetune` (OUT/finetune/ImageAudioNet_videos.pth and OUT/finetune/imageaudionet); steps 3-5 follow.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Per preset: the training flags on top of configs/synthetic.py, and the fusion-net fit's settings.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"train": [], "pretrain": {"epochs": 4, "clips_per_video": 32}},
    "tiny": {"train": ["--epochs", "2", "--batch_size", "16", "--milestones", "1", "--warmup_epochs", "0",
                       "--checkpoint_freq", "1", "--buckets", "512", "--print_freq", "2"],
             "pretrain": {"epochs": 2, "clips_per_video": 16}},
    # raw videos -> l2l-extract -> l2l-finetune (step_videos) instead of l2l-synth and the fit
    "videos": {"train": ["--epochs", "15", "--batch_size", "8", "--milestones", "12", "--warmup_epochs", "0",
                         "--checkpoint_freq", "3", "--buckets", "32", "--print_freq", "4"],
               "videos": {"classes": 4, "train": 32, "val": 16, "seconds": (12, 18)},
               "extract": ["--frame_size", "48", "--crop", "48", "--batch_size", "32", "--calibrate_bn"],
               "finetune": ["--epochs", "20", "--batch_size", "64", "--lr", "1e-3"]},
    # generated videos + a teacher -> frozen-resnet18 features vs l2l-distill's (l2l_jax.video.distill_demo)
    "distill": {"train": ["--epochs", "10", "--batch_size", "8", "--milestones", "8", "--warmup_epochs", "0",
                          "--checkpoint_freq", "5", "--buckets", "32", "--print_freq", "4"]},
}
EPISODE_LENGTH = 10


def config_file() -> Path:
    """configs/synthetic.py of this checkout (the package is installed editable, beside configs/)."""
    return Path(__file__).resolve().parents[1] / "configs" / "synthetic.py"


def _shown(path: Path | str) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _header(n: int, text: str) -> None:
    print(f"\n{'=' * 100}\n[{n}/5] {text}\n{'=' * 100}", flush=True)


def _run(program: str, entry: Callable[[list[str]], Any], argv: list[str]) -> float:
    """Print the command line, run the program's main(argv), fail on a non-zero status; returns the seconds."""
    print(f"$ {program} {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    status = entry(argv)
    if status not in (None, 0):
        raise SystemExit(f"l2l-demo: {program} failed with status {status}")
    return time.perf_counter() - t0


def _data_complete(data: Path, preset: str, seed: int) -> bool:
    """Whether `data` holds a finished l2l-synth output of this preset and seed (segments.json is written last)."""
    seg = data / "segments.json"
    if not (seg.is_file() and (data / "train.pkl").is_file() and (data / "val.pkl").is_file()):
        return False
    try:
        truth = json.loads(seg.read_text())
    except (OSError, ValueError):
        return False
    return truth.get("preset") == preset and truth.get("seed") == seed


def step_data(out: Path, preset: str, seed: int) -> tuple[Path, int]:
    """Step 1: the synthetic dataset; returns (folder, number of classes)."""
    from l2l_jax.data import synthetic

    data = out / "data"
    _header(1, f"synthetic dataset ({preset} preset) -> {_shown(data)}")
    if _data_complete(data, preset, seed):
        print(f"already there and complete: {_shown(data)} (delete it to regenerate)")
    else:
        _run("l2l-synth", synthetic.main, ["--out", _shown(data), "--preset", preset, "--seed", str(seed)])
    return data, synthetic.PRESETS[preset].num_classes


def step_imageaudionet(out: Path, data: Path, num_classes: int, preset: str, seed: int) -> dict[str, Any]:
    """Step 2: fit the fusion net + classifier, export it to an upstream .pth, convert that back."""
    from convert import cli as convert_cli
    from l2l_jax.data import open_split
    from l2l_jax.model_dir import save_model_dir
    from l2l_jax.pretrain import fit_imageaudionet

    _header(2, "fusion net + classifier on clip-level labels -> upstream-format .pth -> l2l-convert")
    settings = PRESETS[preset]["pretrain"]
    t0 = time.perf_counter()
    source = open_split(data / "train.pkl", variant="two", num_classes=num_classes, progress=True)
    variables, info = fit_imageaudionet(source, num_classes, seed=seed, **settings)
    fit_dir = out / "imageaudionet_fit"
    meta = {"variant": "imageaudionet", "num_classes": num_classes, "feature_dim": 512,
            "source": f"l2l-demo fit on {_shown(data / 'train.pkl')}", "train_clip_acc": info["train_clip_acc"]}
    save_model_dir(fit_dir, variables, meta, overwrite=True)
    fit_s = time.perf_counter() - t0
    print(f"fit {info['clips']} clips ({settings['epochs']} epochs) in {fit_s:.1f} s: train clip accuracy "
          f"{info['train_clip_acc']:.3f}; saved {_shown(fit_dir)}")
    pth, conv = out / "ImageAudioNet_synthetic.pth", out / "imageaudionet"
    _run("l2l-convert", convert_cli.main, ["export", "--flax", _shown(fit_dir), "--out", _shown(pth), "--overwrite"])
    _run("l2l-convert", convert_cli.main,
         ["imageaudionet", "--torch", _shown(pth), "--out", _shown(conv), "--overwrite"])
    return {"pth": pth, "converted": conv, "seconds": time.perf_counter() - t0, **info}


def step_videos(out: Path, seed: int) -> tuple[Path, int, dict[str, Any]]:
    """Steps 1-2 of `--preset videos`: small synthetic videos (`l2l_jax.video.decode.write_synthetic_video`:
    class-specific moving shapes and tones in a few seconds of filler footage, plus a silent distractor) ->
    `l2l-extract` (random networks: nothing is downloaded) -> `l2l-finetune`; returns (data, classes, fit)."""
    import numpy as np

    from l2l_jax.video import decode, extract, finetune

    spec = PRESETS["videos"]["videos"]
    videos, data, ft = out / "videos", out / "data", out / "finetune"
    _header(1, f"synthetic videos -> {_shown(videos)} -> l2l-extract -> {_shown(data)}")
    videos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["video,label,split"]
    for split in ("train", "val"):
        for i in range(spec[split]):
            label, seconds = i % spec["classes"], int(rng.integers(spec["seconds"][0], spec["seconds"][1] + 1))
            name = f"{split}_{i:03d}_class{label}.mp4"
            if not (videos / name).is_file():
                decode.write_synthetic_video(videos / f".{name}.tmp.mp4", label, spec["classes"], seconds=seconds,
                                             seed=seed * 100003 + i + (0 if split == "train" else 50000))
                (videos / f".{name}.tmp.mp4").replace(videos / name)
            rows.append(f"{name},{label},{split}")
    (videos / "labels.csv").write_text("\n".join(rows) + "\n")
    print(f"{spec['train']} train and {spec['val']} val videos of {spec['classes']} classes in {_shown(videos)}")
    t0 = time.perf_counter()
    _run("l2l-extract", extract.main, [_shown(videos), "--labels", _shown(videos / "labels.csv"), "--out",
                                       _shown(data), "--seed", str(seed), *PRESETS["videos"]["extract"]])
    _header(2, "l2l-finetune: fusion net + classifier on the clips -> upstream-format .pth + converted directory")
    _run("l2l-finetune", finetune.main, ["--data", _shown(data), "--num_classes", str(spec["classes"]), "--out",
                                         _shown(ft), "--name", "videos", "--seed", str(seed),
                                         *PRESETS["videos"]["finetune"]])
    report = json.loads((ft / "finetune.json").read_text())
    fit = {"pth": ft / "ImageAudioNet_videos.pth", "converted": ft / "imageaudionet",
           "seconds": time.perf_counter() - t0, "clips": report["train_clips"],
           "train_clip_acc": report["train_clip_acc_last_epoch"]}
    return data, spec["classes"], fit


def step_train(out: Path, data: Path, num_classes: int, weights: Path, preset: str, seed: int,
               compute: list[str] = ()) -> dict[str, Any]:
    """Step 3: l2l-train with configs/synthetic.py from the converted fusion net; returns time and speed."""
    from l2l_jax import train

    run_dir = out / "train"
    _header(3, f"train the preview policy (configs/synthetic.py) -> {_shown(run_dir)}")
    if (run_dir / "config.json").is_file():  # a previous demo's run: start afresh (l2l-train would resume it)
        print(f"removing the previous demo run {_shown(run_dir)}")
        shutil.rmtree(run_dir)
    argv = ["--config", _shown(config_file()), "--train_dataset_file", _shown(data / "train.pkl"),
            "--test_dataset_file", _shown(data / "val.pkl"), "--num_classes", str(num_classes),
            "--weights_audioImageModel", _shown(weights), "--checkpoint_path", _shown(run_dir),
            "--seed", str(seed), *PRESETS[preset]["train"], *compute]
    seconds = _run("l2l-train", train.main, argv)
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in epochs if r.get("kind") == "epoch"]
    steady = epochs[1:] or epochs  # epoch 0 includes compiling
    videos = sum(r["train/videos_per_s"] * r["train/seconds"] for r in steady)
    rate = videos / max(sum(r["train/seconds"] for r in steady), 1e-9)
    return {"dir": run_dir, "seconds": seconds, "videos_per_s": rate, "epochs": len(epochs)}


def step_eval(out: Path, data: Path, num_classes: int, run_dir: Path, seed: int,
              compute: list[str] = ()) -> dict[str, Any]:
    """Step 4: l2l-eval of the final model with baselines, metrics JSON, per-video export and plots."""
    from l2l_jax import evaluate
    from l2l_jax.programs import flags as program_flags

    _header(4, "evaluate the policy and the baselines (uniform, random, all clips)")
    cfg = program_flags.load_config_file(str(config_file()))
    flags = [f"--{k}" for k in ("with_replacement", "mean_feature_as_start", "compute_mAP") if cfg.get(k)]
    metrics, plots, export = out / "metrics.json", out / "plots", out / "clips.jsonl"
    argv = ["--test_dataset_file", _shown(data / "val.pkl"), "--num_classes", str(num_classes),
            "--episode_length", str(EPISODE_LENGTH), "--pretrained_model", _shown(run_dir / "model_final"),
            *flags, "--batch_size", str(cfg.batch_size), "--buckets", *map(str, cfg.buckets), "--seed", str(seed),
            "--metrics_json", _shown(metrics), "--plot", _shown(plots), "--export", _shown(export), *compute]
    for path in (metrics, export):  # a previous demo's outputs (l2l-eval never overwrites silently)
        path.unlink(missing_ok=True)
    seconds = _run("l2l-eval", evaluate.main, argv)
    return {"metrics": metrics, "plots": plots, "export": export, "seconds": seconds,
            "result": json.loads(metrics.read_text())}


def final_screen(out: Path, fit: dict[str, Any], trained: dict[str, Any], ev: dict[str, Any],
                 total_s: float) -> str:
    """The last screen: the comparison table at E = 10, speeds, and where the outputs are."""
    r = ev["result"]
    e = r["episode_length"]
    rows = [("policy (avgpool head)", r["avgpool_acc"], r["avgpool_map"]),
            (f"uniform ({e} evenly spaced clips)", r["baselines"]["uniform"]["acc"], r["baselines"]["uniform"]["map"]),
            (f"random ({e} random clips)", r["baselines"]["random"]["acc"], r["baselines"]["random"]["map"]),
            ("all clips averaged", r["baselines"]["all"]["acc"], r["baselines"]["all"]["map"])]

    def m(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    lines = [f"\n{'=' * 100}", f"Listen to Look on the synthetic validation set: {r['num_videos']} videos, E = {e}",
             f"{'=' * 100}", f"{'method':36s} {'mAP':>8} {'accuracy':>9}"]
    lines += [f"{name:36s} {m(mp):>8} {acc * 100:8.2f}%" for name, acc, mp in rows]
    uni = r["baselines"]["uniform"]["map"]
    if uni is not None and r["avgpool_map"] is not None:
        lines.append(f"policy - uniform: {r['avgpool_map'] - uni:+.4f} mAP, "
                     f"{(r['avgpool_acc'] - r['baselines']['uniform']['acc']) * 100:+.2f} accuracy points")
    lines += ["",
              f"training:   {trained['seconds']:.1f} s for {trained['epochs']} epochs (compiling included), "
              f"{trained['videos_per_s']:.1f} videos/s after the first epoch (compiling new length buckets included)",
              f"evaluation: {r['videos_per_second']:.1f} videos/s (+ {r['compile_seconds']:.1f} s compiling); "
              f"fusion-net fit + conversion {fit['seconds']:.1f} s; demo total {total_s:.1f} s",
              "",
              f"upstream-format fusion net:  {_shown(fit['pth'])}",
              f"converted fusion net:        {_shown(fit['converted'])}",
              f"training run (checkpoints):  {_shown(trained['dir'] / 'checkpoints')}",
              f"final model:                 {_shown(trained['dir'] / 'model_final')}",
              f"logs:                        {_shown(trained['dir'] / 'run.log')}, "
              f"{_shown(trained['dir'] / 'epoch.log')}, {_shown(trained['dir'] / 'metrics.jsonl')}",
              f"metrics JSON:                {_shown(ev['metrics'])}",
              f"chosen clips per video:      {_shown(ev['export'])}",
              f"pictures:                    {_shown(trained['dir'] / 'curves.png')}, "
              f"{_shown(ev['plots'] / 'map_vs_steps.png')}, {_shown(ev['plots'])}/timeline_*.png"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: run the five steps and print the final screen."""
    ap = argparse.ArgumentParser(prog="l2l-demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (data, weights, run, metrics, plots)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default",
                    help="synthetic dataset size, or videos: from raw video files")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data, the fit, training and evaluation")
    ap.add_argument("--precision", choices=["exact", "fast"], default="exact",
                    help="matmul precision of training and evaluation (see l2l-train --help)")
    ap.add_argument("--layout", choices=["auto", "dense", "chunk"], default="auto",
                    help="feature layout of training and evaluation (see l2l-train --help)")
    args = ap.parse_args(argv)
    compute = ["--precision", args.precision, "--layout", args.layout]
    from l2l_jax.errors import ConfigError
    from l2l_jax.outputs import output_dir

    try:
        out = output_dir(args.out, "--out")  # a file, FIFO or read-only place: one line, before any work
    except ConfigError as e:
        print(f"l2l-demo: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.preset == "distill":
        from l2l_jax.video import distill_demo

        print(distill_demo.run(out, args.seed, compute), flush=True)
        return 0
    if args.preset == "videos":
        data, num_classes, fit = step_videos(out, args.seed)
    else:
        data, num_classes = step_data(out, args.preset, args.seed)
        fit = step_imageaudionet(out, data, num_classes, args.preset, args.seed)
    trained = step_train(out, data, num_classes, fit["converted"], args.preset, args.seed, compute)
    ev = step_eval(out, data, num_classes, trained["dir"], args.seed, compute)
    _header(5, "results")
    print(final_screen(out, fit, trained, ev, time.perf_counter() - t0), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
