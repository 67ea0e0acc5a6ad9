"""`l2l-demo --preset distill`: frozen-resnet18 features against distilled ones, on the same generated videos.

1. Small synthetic videos (`l2l_jax.video.decode.write_synthetic_video`: a class's moving shape and its tone in
   a 2-3 s segment of filler footage, a silent distractor shape of another class elsewhere) and a teacher in
   upstream's per-video ``.npy`` layout whose classes depend on image *and* sound together: a clip gets its
   video's class (logits 6 * one-hot) only when the class's shape is visible *and* its tone audible (the
   segment); the distractor (shape without tone) and the tone heard around the segment without the shape get
   uninformative logits (all zeros).
2. Baseline: `l2l-extract` with frozen random resnet18s (``--calibrate_bn``, nothing is downloaded) ->
   `l2l-finetune` -> `l2l-train` -> `l2l-eval`.
3. `l2l-distill` (the teacher, end to end from the decoded clips) -> `l2l-extract --weights_imageaudionet` (image,
   audio and imageAudio features from the distilled networks) -> `l2l-train` -> `l2l-eval`.
4. The last screen: the preview policy's mAP and accuracy on the same validation videos with both features.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

#: the preset's sizes and each program's flags (l2l-train's: `l2l_jax.demo.PRESETS["distill"]`)
SETTINGS: dict[str, Any] = {
    "videos": {"classes": 4, "train": 24, "val": 12, "seconds": (12, 15)},
    "extract": ["--frame_size", "48", "--crop", "48", "--batch_size", "32"],
    "finetune": ["--epochs", "20", "--batch_size", "64", "--lr", "1e-3"],
    "distill": ["--frame_size", "48", "--crop", "48", "--flip", "--epochs", "4", "--batch_size", "16",
                "--lr", "1e-3", "--temperature", "2"],
}
TEACHER_SCALE = 6.0


def teacher_rows(plan: dict, num_classes: int, seconds: int) -> np.ndarray:
    """(seconds, C) float32 teacher logits of one video from its plan (`decode.synthetic_clip_plan`)."""
    out = np.zeros((seconds, num_classes), np.float32)
    s0, s1 = plan["segment"]
    out[s0:s1, plan["label"]] = TEACHER_SCALE
    return out


def write_videos(folder: Path, teacher: Path, seed: int) -> int:
    """The videos, labels.csv and the teacher's files; returns the number of classes."""
    from l2l_jax.video import decode

    spec = SETTINGS["videos"]
    folder.mkdir(parents=True, exist_ok=True)
    teacher.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["video,label,split"]
    for split in ("train", "val"):
        for i in range(spec[split]):
            label, seconds = i % spec["classes"], int(rng.integers(spec["seconds"][0], spec["seconds"][1] + 1))
            name = f"{split}_{i:03d}_class{label}"
            vseed = seed * 100003 + i + (0 if split == "train" else 50000)
            plan = decode.synthetic_clip_plan(label, spec["classes"], seconds, vseed)
            if not (folder / f"{name}.mp4").is_file():
                decode.write_synthetic_video(folder / f".{name}.tmp.mp4", label, spec["classes"], seconds=seconds,
                                             seed=vseed)
                (folder / f".{name}.tmp.mp4").replace(folder / f"{name}.mp4")
            np.save(teacher / f"{name}.npy", teacher_rows(plan, spec["classes"], seconds))
            rows.append(f"{name}.mp4,{label},{split}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return spec["classes"]


def run(out: Path, seed: int, compute: list[str]) -> str:
    """Every step of the preset; returns the last screen."""
    from l2l_jax import demo
    from l2l_jax.video import distill, extract, finetune

    t_start = time.perf_counter()
    videos, teacher = out / "videos", out / "teacher"
    demo._header(1, f"synthetic videos -> {demo._shown(videos)}, teacher logits -> {demo._shown(teacher)}")
    num_classes = write_videos(videos, teacher, seed)
    spec = SETTINGS["videos"]
    print(f"{spec['train']} train and {spec['val']} val videos of {num_classes} classes; the teacher names a clip's "
          "class only where the class's shape is seen and its tone heard together")
    labels = demo._shown(videos / "labels.csv")
    results: dict[str, dict[str, Any]] = {}

    # -- frozen resnet18s (random, BatchNorm calibrated): extract -> finetune -> train -> eval
    base, data = out / "frozen", out / "frozen" / "data"
    demo._header(2, "baseline: frozen resnet18 features -> l2l-finetune -> l2l-train -> l2l-eval")
    t0 = time.perf_counter()
    demo._run("l2l-extract", extract.main, [demo._shown(videos), "--labels", labels, "--out", demo._shown(data),
                                            "--seed", str(seed), "--calibrate_bn", *SETTINGS["extract"]])
    demo._run("l2l-finetune", finetune.main, ["--data", demo._shown(data), "--num_classes", str(num_classes),
                                              "--out", demo._shown(base / "finetune"), "--name", "frozen",
                                              "--seed", str(seed), *SETTINGS["finetune"]])
    trained = demo.step_train(base, data, num_classes, base / "finetune" / "imageaudionet", "distill", seed, compute)
    ev = demo.step_eval(base, data, num_classes, trained["dir"], seed, compute)
    results["frozen"] = {"result": ev["result"], "seconds": time.perf_counter() - t0}

    # -- distilled: l2l-distill -> extract again -> train -> eval
    dist, data = out / "distilled", out / "distilled" / "data"
    demo._header(3, "l2l-distill: VisualNet + AudioNet + fusion net from the teacher, end to end on the clips")
    t0 = time.perf_counter()
    demo._run("l2l-distill", distill.main, [demo._shown(videos), "--labels", labels, "--out",
                                            demo._shown(dist / "net"), "--teacher", demo._shown(teacher),
                                            "--name", "distilled", "--seed", str(seed), *SETTINGS["distill"]])
    distill_s = time.perf_counter() - t0
    report = json.loads((dist / "net" / "distill.json").read_text())
    demo._header(4, "distilled features: l2l-extract --weights_imageaudionet -> l2l-train -> l2l-eval")
    demo._run("l2l-extract", extract.main, [demo._shown(videos), "--labels", labels, "--out", demo._shown(data),
                                            "--weights_imageaudionet", demo._shown(dist / "net"),
                                            *SETTINGS["extract"]])
    trained_d = demo.step_train(dist, data, num_classes, dist / "net" / "imageaudionet", "distill", seed, compute)
    ev_d = demo.step_eval(dist, data, num_classes, trained_d["dir"], seed, compute)
    results["distilled"] = {"result": ev_d["result"], "seconds": time.perf_counter() - t0}

    demo._header(5, "results")
    rf, rd = results["frozen"]["result"], results["distilled"]["result"]
    last = report.get("last_epoch", {})

    def row(name: str, r: dict) -> str:
        u = r["baselines"]["uniform"]
        return (f"{name:44s} {r['avgpool_map']:8.4f} {r['avgpool_acc'] * 100:8.2f}% {u['map']:12.4f} "
                f"{u['acc'] * 100:8.2f}%")

    lines = [f"\n{'=' * 100}",
             f"Listen to Look with frozen vs distilled clip features: {rd['num_videos']} validation videos, "
             f"E = {rd['episode_length']}", "=" * 100,
             f"{'features':44s} {'policy mAP':>8} {'accuracy':>9} {'uniform mAP':>12} {'accuracy':>9}",
             row("frozen resnet18s (random, BN calibrated)", rf), row("distilled (l2l-distill, end to end)", rd),
             f"distilled - frozen: {rd['avgpool_map'] - rf['avgpool_map']:+.4f} policy mAP",
             "",
             f"l2l-distill: {report['train_clips']} training clips, {report['epochs']} epochs in "
             f"{distill_s:.1f} s (caching and compiling included); last epoch "
             f"{last.get('clips_per_s', 0):.1f} clips/s, val agreement with the teacher "
             f"{last.get('val_top1', float('nan')):.3f}",
             f"demo total {time.perf_counter() - t_start:.1f} s",
             "",
             f"distilled networks:  {demo._shown(dist / 'net')} (ImageAudioNet_distilled.pth, imageaudionet/, "
             "visualnet.pth, audionet.pth)",
             f"features:            {demo._shown(base / 'data')} (frozen), {demo._shown(data)} (distilled)",
             f"metrics JSON:        {demo._shown(base / 'metrics.json')}, {demo._shown(dist / 'metrics.json')}"]
    summary = {"frozen_map": rf["avgpool_map"], "distilled_map": rd["avgpool_map"],
               "frozen_acc": rf["avgpool_acc"], "distilled_acc": rd["avgpool_acc"],
               "seconds": time.perf_counter() - t_start}
    (out / "distill_demo.json").write_text(json.dumps(summary, indent=1) + "\n")
    return "\n".join(lines)


__all__ = ["SETTINGS", "run", "teacher_rows", "write_videos"]
