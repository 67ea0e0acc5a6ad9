"""`l2l-demo`: the whole system end to end on the embedded synthetic dataset, with no downloads.

    l2l-demo --out runs/demo [--preset default|tiny|videos|distill] [--seed N] [--precision exact|fast]
             [--layout auto|dense|chunk]

Five steps, each through the program a user would run (the equivalent command line is printed before each):
1. `l2l-synth` writes the dataset to OUT/data (skipped when a complete one of the same preset and seed is there);
2. a short jitted fit of the fusion net + classifier on clip-level labels (`l2l_jax.video.finetune.fit_imageaudionet`,
   the stand-in for upstream's released `ImageAudioNet_*.pth`), exported with `l2l-convert export` to
   OUT/ImageAudioNet_synthetic.pth and converted back with `l2l-convert imageaudionet` to OUT/imageaudionet, so
   the conversion path runs for real;
3. `l2l-train --config configs/synthetic.py` trains the preview policy from OUT/imageaudionet into OUT/train;
4. `l2l-eval` evaluates it with the baselines, writing OUT/metrics.json, OUT/clips.jsonl and OUT/plots/; the
   demo adds OUT/plots/truth/: the policy's choices drawn over the true class segments (`truth_timelines`);
5. the last screen: policy vs uniform vs random vs all clips at E = 10, speeds, and where everything is.

`--preset distill`: frozen-resnet18 features against distilled ones (`l2l_jax.programs.demo_distill`).
Steps 3-4 of every preset are `l2l_jax.programs.demo_steps`.

`--preset videos` starts from raw video files instead (steps 1-2: `step_videos`): it writes small synthetic
videos to OUT/videos, extracts their clip features with `l2l-extract` (random networks), the image and audio
features and, with ``--video_model r2plus1d_18``, a video network's clip features (r2plus1d152_features/) and
logits (video_logits/), and fits the fusion net with `l2l-finetune` (OUT/finetune/ImageAudioNet_videos.pth and
OUT/finetune/imageaudionet); steps 3-4 follow, then the single-modality variant is trained and evaluated on the
video network's features the same way into OUT/single (`step_single`: OUT/single/train, OUT/single/metrics.json,
...), and the last screen shows its row beside the two-modality policy's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from l2l_jax import variants
from l2l_jax.data import synthetic
from l2l_jax.data.source import open_split
from l2l_jax.model_dir import save_model_dir
from l2l_jax.outputs import output_dir
from l2l_jax.programs import demo_distill, extract, finetune, flags, synth
from l2l_jax.programs.demo_steps import _header, _run, _run_module, _shown, step_eval, step_train
from l2l_jax.video import decode
from l2l_jax.video import video_networks as V
from l2l_jax.video.finetune import fit_imageaudionet

#: Per preset: the training flags on top of configs/synthetic.py, and the fusion-net fit's settings.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"train": [], "pretrain": {"epochs": 4, "clips_per_video": 32}},
    "tiny": {"train": ["--epochs", "2", "--batch_size", "16", "--milestones", "1", "--warmup_epochs", "0",
                       "--checkpoint_freq", "1", "--buckets", "512", "--print_freq", "2"],
             "pretrain": {"epochs": 2, "clips_per_video": 16}},
    # raw videos -> l2l-extract -> l2l-finetune (step_videos) instead of l2l-synth and the fit
    # (the video network sees 16 x 16-pixel clips: the whole extraction ran at 4.7-8.6 clips/s on 2 busy CPU
    # cores, 1.4 clips/s with --video_size 64 --video_crop 56; its features train the single-modality variant
    # with the same training flags: `step_single`)
    "videos": {"train": ["--epochs", "15", "--batch_size", "8", "--milestones", "12", "--warmup_epochs", "0",
                         "--checkpoint_freq", "3", "--buckets", "32", "--print_freq", "4"],
               "videos": {"classes": 4, "train": 32, "val": 16, "seconds": (12, 18)},
               "extract": ["--frame_size", "48", "--crop", "48", "--batch_size", "32", "--calibrate_bn",
                           "--video_size", "16", "--video_crop", "16"],
               "video_model": "r2plus1d_18",
               "finetune": ["--epochs", "20", "--batch_size", "64", "--lr", "1e-3"]},
    # generated videos + a teacher -> frozen-resnet18 features vs l2l-distill's (l2l_jax.programs.demo_distill)
    "distill": {"train": demo_distill.SETTINGS["train"]},
}
TRUTH_TIMELINES = 32  # videos whose timelines the demo draws over their true segments (synthetic presets)


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

    data = out / "data"
    _header(1, f"synthetic dataset ({preset} preset) -> {_shown(data)}")
    if _data_complete(data, preset, seed):
        print(f"already there and complete: {_shown(data)} (delete it to regenerate)")
    else:
        _run("l2l-synth", synth.main, ["--out", _shown(data), "--preset", preset, "--seed", str(seed)])
    return data, synthetic.PRESETS[preset].num_classes


def step_imageaudionet(out: Path, data: Path, num_classes: int, preset: str, seed: int) -> dict[str, Any]:
    """Step 2: fit the fusion net + classifier, export it to an upstream .pth, convert that back."""

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
    # l2l-convert is the one program outside the library (convert/): run as the user runs it, in its own process
    _run_module("l2l-convert", "convert.cli",
                ["export", "--flax", _shown(fit_dir), "--out", _shown(pth), "--overwrite"])
    _run_module("l2l-convert", "convert.cli",
                ["imageaudionet", "--torch", _shown(pth), "--out", _shown(conv), "--overwrite"])
    return {"pth": pth, "converted": conv, "seconds": time.perf_counter() - t0, **info}


def write_videos(videos: Path, spec: dict[str, Any], seed: int) -> Path:
    """`spec["train"]` and `spec["val"]` small synthetic videos of `spec["classes"]` classes, `spec["seconds"]`
    (lo, hi) long, in `videos` (`l2l_jax.video.decode.write_synthetic_video`: class-specific moving shapes and
    tones in a few seconds of filler footage, plus a silent distractor; one already there is kept), and their
    labels CSV (``video,label,split``); returns the CSV's path."""
    videos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["video,label,split"]
    for split in ("train", "val"):
        for i in range(spec[split]):
            label, seconds = i % spec["classes"], int(rng.integers(spec["seconds"][0], spec["seconds"][1] + 1))
            name = f"{split}_{i:03d}_class{label}.mp4"
            if not (videos / name).is_file():
                tmp = videos / f".{name}.{os.getpid()}.tmp.mp4"  # one writer's own file until it is complete
                decode.write_synthetic_video(tmp, label, spec["classes"], seconds=seconds,
                                             seed=seed * 100003 + i + (0 if split == "train" else 50000))
                tmp.replace(videos / name)
            rows.append(f"{name},{label},{split}")
    labels = videos / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return labels


def step_videos(out: Path, seed: int) -> tuple[Path, int, dict[str, Any]]:
    """Steps 1-2 of `--preset videos`: small synthetic videos (`write_videos`) -> `l2l-extract` (random networks:
    nothing is downloaded; image, audio and the video network's features and logits) -> `l2l-finetune`; returns
    (data, classes, fit)."""

    preset = PRESETS["videos"]
    spec = preset["videos"]
    videos, data, ft = out / "videos", out / "data", out / "finetune"
    _header(1, f"synthetic videos -> {_shown(videos)} -> l2l-extract -> {_shown(data)}")
    labels = write_videos(videos, spec, seed)
    print(f"{spec['train']} train and {spec['val']} val videos of {spec['classes']} classes in {_shown(videos)}")
    t0 = time.perf_counter()
    _run("l2l-extract", extract.main, [_shown(videos), "--labels", _shown(labels), "--out", _shown(data),
                                       "--seed", str(seed), *preset["extract"],
                                       "--video_model", preset["video_model"]])
    _header(2, "l2l-finetune: fusion net + classifier on the clips -> upstream-format .pth + converted directory")
    _run("l2l-finetune", finetune.main, ["--data", _shown(data), "--num_classes", str(spec["classes"]), "--out",
                                         _shown(ft), "--name", "videos", "--seed", str(seed), *preset["finetune"]])
    report = json.loads((ft / "finetune.json").read_text())
    fit = {"pth": ft / "ImageAudioNet_videos.pth", "converted": ft / "imageaudionet",
           "seconds": time.perf_counter() - t0, "clips": report["train_clips"],
           "train_clip_acc": report["train_clip_acc_last_epoch"]}
    return data, spec["classes"], fit


def step_single(out: Path, data: Path, num_classes: int, seed: int, compute: Sequence[str] = ()) -> dict[str, Any]:
    """Part of steps 3-4 of `--preset videos`: the single-modality variant (`l2l_jax.variants.SINGLE`) trained and
    evaluated as the two-modality policy is (`step_train`, `step_eval`, the preset's training flags), on the
    clip features of the preset's random video network (r2plus1d152_features/), into OUT/single; returns
    {"trained", "ev", "video_model"}."""
    preset = PRESETS["videos"]
    arch, single = preset["video_model"], out / "single"
    _header(None, f"the single-modality variant on the clip features of a random {arch} (r2plus1d152_features/) "
                  f"-> {_shown(single)}")
    width = V.spec_of(arch).feature_dim
    trained = step_train(single, data, num_classes, None, preset["train"], seed, compute, step=None,
                         variant=variants.SINGLE.name, embedding_size=width)
    ev = step_eval(single, data, num_classes, trained["dir"], seed, compute, step=None,
                   variant=variants.SINGLE.name, embedding_size=width)
    return {"trained": trained, "ev": ev, "video_model": arch}


def step_predict(out: Path, trained: dict[str, Any], seed: int, compute: Sequence[str] = ()) -> Path:
    """The end of `--preset videos`: `l2l-predict` with the two-modality run on new videos it never saw (one per
    class, drawn with other seeds than the training and validation videos; their names give the true class, which
    l2l-predict does not read). The features were made with `--calibrate_bn`, so l2l-predict recalibrates the
    random networks from the demo's videos and labels CSV (and checks them against extract.json). Writes
    OUT/predict (predictions.jsonl, the feature cache, timelines/); returns that folder."""
    from l2l_jax.programs import predict  # imported here: only this preset runs it

    spec = PRESETS["videos"]["videos"]
    videos, new, dest = out / "videos", out / "new_videos", out / "predict"
    _header(None, f"l2l-predict: the trained policy on {spec['classes']} new, unlabelled videos -> {_shown(dest)}")
    new.mkdir(parents=True, exist_ok=True)
    lo, hi = spec["seconds"]
    files = []
    for label in range(spec["classes"]):
        name = new / f"new_{label:03d}_class{label}.mp4"
        if not name.is_file():
            tmp = new / f".{name.name}.{os.getpid()}.tmp.mp4"
            decode.write_synthetic_video(tmp, label, spec["classes"], seconds=(lo + hi) // 2,
                                         seed=seed * 100003 + 90000 + label)
            tmp.replace(name)
        files.append(_shown(name))
    _run("l2l-predict", predict.main, [*files, "--model", _shown(trained["dir"]), "--calibration", _shown(videos),
                                       _shown(videos / "labels.csv"), "--out", _shown(dest), "--plot",
                                       "--top_k", "3", "--seed", str(seed), *compute])
    return dest


def truth_timelines(data: Path, ev: dict[str, Any], limit: int = TRUTH_TIMELINES) -> Path | None:
    """The policy's choices over each video's true class segments and distractors (the synthetic dataset's
    ``segments.json``): OUT/plots/truth/timeline_<id>.png for the first `limit` validation videos; returns the
    folder (None without ``segments.json``: the videos preset)."""
    import matplotlib.pyplot as plt

    from l2l_jax.evaluation import plots

    seg = data / "segments.json"
    if not seg.is_file():
        return None
    truth = json.loads(seg.read_text())["val"]
    folder = ev["plots"] / "truth"
    folder.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in ev["export"].read_text().splitlines()[:limit] if line.strip()]
    fig = plt.figure(figsize=(8, 2.2))
    try:
        for rec in records:
            t = truth[rec["id"]]
            spans = [(a, b, "class segment") for a, b in t["segments"]]
            spans += [(a, b, "distractor") for a, b, _ in t["distractors"]]
            plots.timeline(folder / f"timeline_{rec['id']:06d}.png", num_clips=rec["num_clips"],
                           rows={"image": rec["image_idx"], "audio": rec["audio_idx"]}, fig=fig, spans=spans,
                           title=f"{t['name']}: label {rec['label']}, predicted {rec['prediction']}")
    finally:
        plt.close(fig)
    return folder


def final_screen(out: Path, fit: dict[str, Any], trained: dict[str, Any], ev: dict[str, Any],
                 total_s: float, single: dict[str, Any] | None = None) -> str:
    """The last screen: the comparison table at E = 10 (with `single`, `step_single`'s result: the
    single-modality policy's row too), speeds, and where the outputs are."""
    r = ev["result"]
    e = r["episode_length"]
    rows = [("policy (avgpool head)", r["avgpool_acc"], r["avgpool_map"]),
            (f"uniform ({e} evenly spaced clips)", r["baselines"]["uniform"]["acc"], r["baselines"]["uniform"]["map"]),
            (f"random ({e} random clips)", r["baselines"]["random"]["acc"], r["baselines"]["random"]["map"]),
            ("all clips averaged", r["baselines"]["all"]["acc"], r["baselines"]["all"]["map"])]
    if single is not None:
        s = single["ev"]["result"]
        rows.append((f"single-modality policy, random {single['video_model']} features", s["avgpool_acc"],
                     s["avgpool_map"]))

    def m(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    w = max(36, *(len(name) for name, _, _ in rows))
    lines = [f"\n{'=' * 100}", f"Listen to Look on the synthetic validation set: {r['num_videos']} videos, E = {e}",
             f"{'=' * 100}", f"{'method':{w}s} {'mAP':>8} {'accuracy':>9}"]
    lines += [f"{name:{w}s} {m(mp):>8} {acc * 100:8.2f}%" for name, acc, mp in rows]
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
    if ev.get("truth") is not None:
        lines.append(f"true segments:               {_shown(ev['truth'])}/timeline_*.png (the policy's choices over "
                     "each video's class segments and distractors)")
    if single is not None:
        st, se = single["trained"], single["ev"]
        lines += ["",
                  f"single-modality variant (--variant single) on r2plus1d152_features/ of a random "
                  f"{single['video_model']} (l2l-extract --video_model, no weights: testing only): training "
                  f"{st['seconds']:.1f} s, evaluation {se['result']['videos_per_second']:.1f} videos/s",
                  f"single-modality run:         {_shown(st['dir'])}, metrics {_shown(se['metrics'])}, chosen clips "
                  f"{_shown(se['export'])}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: run the five steps and print the final screen (an input error: one line
    ``l2l-demo: ...`` and exit status 2, `flags.run_program`)."""
    return flags.run_program("demo", lambda: _main(argv), argv)


def build_parser() -> argparse.ArgumentParser:
    """l2l-demo's flags (the shared ones from `flags.add_common`)."""
    ap = argparse.ArgumentParser(prog="l2l-demo", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default",
                    help="synthetic dataset size, videos: from raw video files, distill: frozen vs distilled "
                         "clip features")
    flags.add_common(ap, "out", "seed", "precision", "layout",
                     out={"required": True, "help": "output folder (data, weights, run, metrics, plots)"},
                     seed={"help": "seed of the data, the fit, training and evaluation"})
    return ap


def _main(argv: Sequence[str] | None) -> int:

    args = build_parser().parse_args(argv)
    compute = ["--precision", args.precision, "--layout", args.layout]
    out = output_dir(args.out, "--out")  # a file, FIFO or read-only place: one line, before any work
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.preset == "distill":
        print(demo_distill.run(out, args.seed, compute), flush=True)
        return 0
    single = None
    if args.preset == "videos":
        data, num_classes, fit = step_videos(out, args.seed)
    else:
        data, num_classes = step_data(out, args.preset, args.seed)
        fit = step_imageaudionet(out, data, num_classes, args.preset, args.seed)
    trained = step_train(out, data, num_classes, fit["converted"], PRESETS[args.preset]["train"], args.seed, compute)
    ev = step_eval(out, data, num_classes, trained["dir"], args.seed, compute)
    ev["truth"] = truth_timelines(data, ev)
    if args.preset == "videos":
        single = step_single(out, data, num_classes, args.seed, compute)
    _header(5, "results")
    print(final_screen(out, fit, trained, ev, time.perf_counter() - t0, single), flush=True)
    if args.preset == "videos":
        step_predict(out, trained, args.seed, compute)
    return 0


if __name__ == "__main__":
    sys.exit(main())
