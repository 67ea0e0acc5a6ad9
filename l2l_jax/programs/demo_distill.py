"""`l2l-demo --preset distill`: frozen-resnet18 features against distilled ones, on the same generated videos.

1. Small synthetic videos (`l2l_jax.video.decode.write_synthetic_video`, 32 x 32 pixels, 16-20 s: a class's
   moving shape and its tone together in a 2-3 s segment of filler footage, a silent distractor shape of another
   class elsewhere) and a teacher in upstream's per-video ``.npy`` layout (`teacher_rows`) that names a clip's
   class from image *and* sound together: the video's class (logit `TEACHER_SCALE`) where the class's shape is
   seen *and* its tone heard (the segment); everywhere else (filler and the silent distractor) only a weak
   guess from the background: the class ``scene % C`` of the video's scene (logit `SCENE_SCALE`), which says
   nothing about the video's class (scenes are drawn independently of it). Every clip has one top-1 class, so
   the student's agreement with the teacher is measured on every clip.
2. Baseline: `l2l-extract` with frozen random resnet18s (``--calibrate_bn``, nothing is downloaded) ->
   `l2l-finetune` -> `l2l-train` -> `l2l-eval`.
3. `l2l-distill` (the teacher, end to end from the decoded clips) -> `l2l-extract --weights_imageaudionet` (image,
   audio and imageAudio features from the distilled networks) -> `l2l-train` -> `l2l-eval`.
4. The last screen: the preview policy's and uniform sampling's mAP and accuracy at E = 4 (a fifth of a video,
   so where the policy looks matters) on the same validation videos with both features, and the student's
   agreement with the teacher on the validation clips beside chance, overall and by kind of clip
   (`agreement_by_kind`); OUT/distill_demo.json holds the same numbers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from l2l_jax import variants
from l2l_jax.model import ImageAudioClassifier
from l2l_jax.model_dir import load_model_dir
from l2l_jax.programs import distill, extract, finetune
from l2l_jax.programs.demo_steps import _header, _run, _shown, step_eval, step_train
from l2l_jax.video import decode

#: The preset's sizes and each program's flags. Square 32-pixel frames keep the whole picture (no crop) and the
#: student cheap enough for a CPU; the preview budget E is a fraction of a video, so where the policy looks
#: matters.
SETTINGS: dict[str, Any] = {
    "videos": {"classes": 4, "train": 48, "val": 48, "seconds": (16, 20), "size": 32},
    "extract": ["--frame_size", "32", "--crop", "32", "--batch_size", "64"],
    "finetune": ["--epochs", "20", "--batch_size", "64", "--lr", "1e-3"],
    "distill": ["--frame_size", "32", "--crop", "32", "--flip", "--epochs", "3", "--batch_size", "32",
                "--lr", "1e-3", "--temperature", "2"],
    "episode_length": 4,
    "train": ["--episode_length", "4", "--epochs", "10", "--batch_size", "8", "--milestones", "8",
              "--warmup_epochs", "0", "--checkpoint_freq", "5", "--buckets", "32", "--print_freq", "4"],
}
KIND_NAMES = {"segment": "class seen and heard", "distractor": "silent distractor", "other": "filler"}
TEACHER_SCALE = 6.0  # the teacher's logit for the class it sees and hears
SCENE_SCALE = 2.0  # its logit for the background's class where it sees and hears no class together


def teacher_rows(plan: dict, num_classes: int, seconds: int) -> np.ndarray:
    """(seconds, C) float32 teacher logits of one video from its plan (`decode.synthetic_clip_plan`): the
    video's class in the segment, the scene's class (weakly) everywhere else."""
    out = np.zeros((seconds, num_classes), np.float32)
    out[:, plan["scene"] % num_classes] = SCENE_SCALE
    s0, s1 = plan["segment"]
    out[s0:s1] = 0.0
    out[s0:s1, plan["label"]] = TEACHER_SCALE
    return out


def video_specs(seed: int, spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every video of the preset: name, label, split, seconds and its writer's seed."""
    spec = spec or SETTINGS["videos"]
    rng = np.random.default_rng(seed)
    out = []
    for split in ("train", "val"):
        for i in range(spec[split]):
            label, seconds = i % spec["classes"], int(rng.integers(spec["seconds"][0], spec["seconds"][1] + 1))
            out.append({"name": f"{split}_{i:03d}_class{label}", "label": label, "split": split, "seconds": seconds,
                        "seed": seed * 100003 + i + (0 if split == "train" else 50000)})
    return out


def write_videos(folder: Path, teacher: Path, seed: int, spec: dict[str, Any] | None = None) -> int:
    """The videos, labels.csv and the teacher's files (a video already there is kept: the writer gives the same
    bytes for the same arguments); returns the number of classes."""

    spec = spec or SETTINGS["videos"]
    folder.mkdir(parents=True, exist_ok=True)
    teacher.mkdir(parents=True, exist_ok=True)
    rows = ["video,label,split"]
    for v in video_specs(seed, spec):
        name, plan = v["name"], decode.synthetic_clip_plan(v["label"], spec["classes"], v["seconds"], v["seed"])
        if not (folder / f"{name}.mp4").is_file():
            tmp = folder / f".{name}.{os.getpid()}.tmp.mp4"  # one writer's own file until it is complete
            decode.write_synthetic_video(tmp, v["label"], spec["classes"], seconds=v["seconds"], seed=v["seed"],
                                         width=spec["size"], height=spec["size"])
            tmp.replace(folder / f"{name}.mp4")
        np.save(teacher / f"{name}.npy", teacher_rows(plan, spec["classes"], v["seconds"]))
        rows.append(f"{name}.mp4,{v['label']},{v['split']}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return spec["classes"]


def agreement_by_kind(data: Path, net: Path, seed: int) -> dict[str, tuple[int, int]]:
    """The student's top-1 agreement with the teacher on the validation clips, by kind of clip: ``segment``
    (the class seen and heard), ``distractor`` (another class seen, nothing heard), ``other`` (filler); as
    {kind: (agreeing clips, clips)}. The student's logits are its fusion net + classifier (``net``'s
    ``imageaudionet/``) on the image and audio features `l2l-extract` wrote with its trunks into `data`."""

    spec = SETTINGS["videos"]
    fusion, meta = load_model_dir(net / "imageaudionet")
    model = ImageAudioClassifier(int(meta["num_classes"]))
    image_dir, audio_dir = (data / d for d in variants.TWO.feature_dirs)
    counts = {"segment": [0, 0], "distractor": [0, 0], "other": [0, 0]}
    for v in video_specs(seed):
        if v["split"] != "val" or not (image_dir / f"{v['name']}.npy").is_file():
            continue
        plan = decode.synthetic_clip_plan(v["label"], spec["classes"], v["seconds"], v["seed"])
        want = teacher_rows(plan, spec["classes"], v["seconds"]).argmax(1)
        _, logits = model.apply(fusion, np.load(image_dir / f"{v['name']}.npy"),
                                np.load(audio_dir / f"{v['name']}.npy"))
        got = np.asarray(logits).argmax(1)
        (s0, s1), d = plan["segment"], plan["distractor"]
        for t in range(min(len(got), len(want))):
            kind = ("segment" if s0 <= t < s1 else "distractor" if d is not None and d[0] <= t < d[1]
                    else "other")
            counts[kind][0] += int(got[t] == want[t])
            counts[kind][1] += 1
    return {k: (a, n) for k, (a, n) in counts.items()}


def _features_and_policy(out: Path, data: Path, num_classes: int, weights: Path, seed: int,
                         compute: list[str]) -> dict[str, Any]:
    """l2l-train from the fusion net `weights` on the features in `data`, then l2l-eval; returns the metrics."""
    trained = step_train(out, data, num_classes, weights, SETTINGS["train"], seed, compute, step=None)
    ev = step_eval(out, data, num_classes, trained["dir"], seed, compute, step=None,
                   episode_length=SETTINGS["episode_length"])
    return ev["result"]


def run(out: Path, seed: int, compute: list[str]) -> str:
    """Every step of the preset; returns the last screen (and writes OUT/distill_demo.json)."""
    t_start = time.perf_counter()
    videos, teacher = out / "videos", out / "teacher"
    _header(1, f"synthetic videos -> {_shown(videos)}, teacher logits -> {_shown(teacher)}")
    num_classes = write_videos(videos, teacher, seed)
    spec = SETTINGS["videos"]
    print(f"{spec['train']} train and {spec['val']} val videos of {num_classes} classes; the teacher names a clip's "
          "class where the class's shape is seen and its tone heard together, elsewhere it guesses weakly from "
          "the background")
    labels = _shown(videos / "labels.csv")
    results: dict[str, dict[str, Any]] = {}

    # -- frozen resnet18s (random, BatchNorm calibrated): extract -> finetune -> train -> eval
    base, data = out / "frozen", out / "frozen" / "data"
    _header(2, "baseline: frozen resnet18 features -> l2l-finetune -> l2l-train -> l2l-eval")
    t0 = time.perf_counter()
    _run("l2l-extract", extract.main, [_shown(videos), "--labels", labels, "--out", _shown(data),
                                       "--seed", str(seed), "--calibrate_bn", *SETTINGS["extract"]])
    _run("l2l-finetune", finetune.main, ["--data", _shown(data), "--num_classes", str(num_classes),
                                         "--out", _shown(base / "finetune"), "--name", "frozen",
                                         "--seed", str(seed), *SETTINGS["finetune"]])
    rf = _features_and_policy(base, data, num_classes, base / "finetune" / "imageaudionet", seed, compute)
    results["frozen"] = {"result": rf, "seconds": time.perf_counter() - t0}

    # -- distilled: l2l-distill -> extract again -> train -> eval
    dist, data = out / "distilled", out / "distilled" / "data"
    _header(3, "l2l-distill: VisualNet + AudioNet + fusion net from the teacher, end to end on the clips")
    t0 = time.perf_counter()
    _run("l2l-distill", distill.main, [_shown(videos), "--labels", labels, "--out", _shown(dist / "net"),
                                       "--teacher", _shown(teacher), "--name", "distilled", "--seed", str(seed),
                                       *SETTINGS["distill"]])
    distill_s = time.perf_counter() - t0
    report = json.loads((dist / "net" / "distill.json").read_text())
    _header(4, "distilled features: l2l-extract --weights_imageaudionet -> l2l-train -> l2l-eval")
    _run("l2l-extract", extract.main, [_shown(videos), "--labels", labels, "--out", _shown(data),
                                       "--weights_imageaudionet", _shown(dist / "net"), *SETTINGS["extract"]])
    rd = _features_and_policy(dist, data, num_classes, dist / "net" / "imageaudionet", seed, compute)
    results["distilled"] = {"result": rd, "seconds": time.perf_counter() - t0}
    kinds = agreement_by_kind(data, dist / "net", seed)

    _header(5, "results")
    last = report.get("last_epoch", {})
    agreement = last.get("val_top1", float("nan"))
    total_s = time.perf_counter() - t_start
    summary = {"seed": seed, "val_videos": rd["num_videos"], "episode_length": rd["episode_length"],
               "agreement": agreement, "chance": 1.0 / num_classes, "seconds": total_s,
               "agreement_by_kind": {k: a / max(n, 1) for k, (a, n) in kinds.items()},
               **{f"{k}_{m}": results[k]["result"]["avgpool_" + m] for k in results for m in ("map", "acc")},
               **{f"{k}_uniform_{m}": results[k]["result"]["baselines"]["uniform"][m] for k in results
                  for m in ("map", "acc")}}
    (out / "distill_demo.json").write_text(json.dumps(summary, indent=1) + "\n")

    return _screen(out, base, dist, data, rf, rd, report, kinds, num_classes, distill_s, total_s)


def _screen(out: Path, base: Path, dist: Path, data: Path, rf: dict, rd: dict, report: dict,
            kinds: dict[str, tuple[int, int]], num_classes: int, distill_s: float, total_s: float) -> str:
    """The preset's last screen: both feature kinds' policy and uniform rows, the agreement, where things are."""
    last = report.get("last_epoch", {})
    agreement = last.get("val_top1", float("nan"))

    def row(name: str, r: dict) -> str:
        u = r["baselines"]["uniform"]
        return (f"{name:44s} {r['avgpool_map']:10.4f} {r['avgpool_acc'] * 100:8.2f}% {u['map']:12.4f} "
                f"{u['acc'] * 100:8.2f}%")

    lines = [f"\n{'=' * 100}",
             f"Listen to Look with frozen vs distilled clip features: {rd['num_videos']} validation videos, "
             f"E = {rd['episode_length']}", "=" * 100,
             f"{'features':44s} {'policy mAP':>10} {'accuracy':>9} {'uniform mAP':>12} {'accuracy':>9}",
             row("frozen resnet18s (random, BN calibrated)", rf), row("distilled (l2l-distill, end to end)", rd),
             f"distilled - frozen: {rd['avgpool_map'] - rf['avgpool_map']:+.4f} policy mAP; policy - uniform with "
             f"distilled features: {rd['avgpool_map'] - rd['baselines']['uniform']['map']:+.4f} mAP",
             "",
             f"the student's top-1 agreement with the teacher on the {report.get('val_clips', 'validation')} "
             f"validation clips: {agreement:.3f} (chance {1.0 / num_classes:.3f})",
             "  by clip: " + ", ".join(f"{KIND_NAMES[k]} {a / max(n, 1):.3f} of {n}" for k, (a, n) in kinds.items()),
             f"l2l-distill: {report['train_clips']} training clips, {report['epochs']} epochs in "
             f"{distill_s:.1f} s (caching and compiling included); last epoch {last.get('clips_per_s', 0):.1f} "
             "clips/s",
             f"demo total {total_s:.1f} s",
             "",
             f"distilled networks:  {_shown(dist / 'net')} (ImageAudioNet_distilled.pth, imageaudionet/, "
             "visualnet.pth, audionet.pth)",
             f"features:            {_shown(base / 'data')} (frozen), {_shown(data)} (distilled)",
             f"metrics JSON:        {_shown(base / 'metrics.json')}, {_shown(dist / 'metrics.json')}, "
             f"{_shown(out / 'distill_demo.json')}"]
    return "\n".join(lines)


__all__ = ["SCENE_SCALE", "SETTINGS", "TEACHER_SCALE", "run", "teacher_rows", "video_specs", "write_videos"]
