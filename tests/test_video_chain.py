"""The chain from raw video files alone: `l2l-extract --video_model r2plus1d_18` (random networks) writes the video
network's clip features and logits, `l2l-train --variant single` / `l2l-eval --variant single` train and evaluate
the single-modality policy on those features, and `l2l-distill --teacher` learns from those logits.

The videos are the videos demo's (`l2l_jax.programs.demo.write_videos`), 2 classes, 10 s, 6 train and 4 val;
the image networks see 32 x 32 frames and the video network 16 frames of 16 x 16 (all resolution-agnostic) to
keep the file short; most of its time is compiling.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("av")

from l2l_jax import config  # noqa: E402
from l2l_jax.data.source import open_split  # noqa: E402
from l2l_jax.programs import demo  # noqa: E402
from l2l_jax.programs import extract as XP  # noqa: E402
from l2l_jax.programs import flags as program_flags  # noqa: E402
from l2l_jax.video import trunks as T  # noqa: E402
from l2l_jax.video import video_networks as V  # noqa: E402

SPEC = {"classes": 2, "train": 6, "val": 4, "seconds": (10, 10)}
EXTRACT = ["--frame_size", "32", "--crop", "32", "--batch_size", "16", "--workers", "2", "--no_progress",
           "--video_model", "r2plus1d_18", "--video_size", "16", "--video_crop", "16"]
E = 4  # episode length: fewer steps than the 10 clips of a video


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("video_chain")
    videos, root = tmp / "videos", tmp / "root"
    labels = demo.write_videos(videos, SPEC, seed=1)
    with pytest.warns(T.RandomWeightsWarning) as caught:  # the image, audio and video networks are random
        rc = XP.main([str(videos), "--labels", str(labels), "--out", str(root), *EXTRACT])
    assert rc == 0
    assert any("r2plus1d_18 is freshly initialised" in str(w.message) for w in caught)
    rows = [line.split(",") for line in labels.read_text().splitlines()[1:]]
    names = {split: [v.removesuffix(".mp4") for v, _, s in rows if s == split] for split in ("train", "val")}
    return {"tmp": tmp, "videos": videos, "labels": labels, "root": root, "names": names}


def _train_argv(root, run) -> list[str]:
    return ["--variant", "single", "--embedding_size", str(V.spec_of("r2plus1d_18").feature_dim),
            "--train_dataset_file", str(root / "train.pkl"), "--test_dataset_file", str(root / "val.pkl"),
            "--num_classes", str(SPEC["classes"]), "--checkpoint_path", str(run), "--epochs", "2",
            "--batch_size", "4", "--warmup_epochs", "0", "--milestones", "1", "--checkpoint_freq", "1",
            "--buckets", "16", "--print_freq", "1", "--episode_length", str(E), "--with_avgpool_ce_loss",
            "--with_lstm_ce_loss", "--compute_mAP", "--mean_feature_as_start", "--with_replacement"]


def test_single_variant_reads_the_video_networks_features(extracted):
    """What l2l-train --variant single opens from the extracted pickles (its own settings, from its flags) is the
    video network's features, row for row, not the image or audio features."""
    root = extracted["root"]
    cfg = program_flags.resolve("train", _train_argv(root, extracted["tmp"] / "unused"))
    config.check(cfg, "train")
    data = config.settings(cfg, "train").data
    for pickle, split in ((data.train_file, "train"), (data.test_file, "val")):
        src = open_split(pickle, **data.split_options(progress=False), cache=False)
        assert len(src) == len(extracted["names"][split])
        for i, name in enumerate(extracted["names"][split]):
            (features, *rest) = src.read(i)
            assert not rest
            want = np.load(root / "r2plus1d152_features" / f"{name}.npy")
            assert want.shape == (10, 512)
            np.testing.assert_array_equal(features, want)
            assert not np.array_equal(features, np.load(root / "image_features" / f"{name}.npy"))


@pytest.mark.slow
def test_single_variant_trains_and_evaluates_on_extracted_features(extracted, tmp_path):
    """l2l-train --variant single on the extracted pickles, then l2l-eval --variant single of its final model:
    finite losses every epoch, a single-modality model of width 512, metrics for the 4 validation videos and an
    export of E chosen clips per video."""
    from l2l_jax.programs import evaluate, train

    root, run = extracted["root"], tmp_path / "run"
    assert train.main(_train_argv(root, run)) == 0
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    epochs = [r for r in epochs if r.get("kind") == "epoch"]
    assert len(epochs) == 2 and all(np.isfinite(r["train/loss"]) for r in epochs), epochs
    meta = json.loads((run / "model_final" / "meta.json").read_text())
    assert (meta["variant"], meta["feature_dim"], meta["num_classes"]) == ("single", 512, SPEC["classes"])

    metrics, export = tmp_path / "metrics.json", tmp_path / "clips.jsonl"
    assert evaluate.main(["--variant", "single", "--test_dataset_file", str(root / "val.pkl"), "--num_classes",
                          str(SPEC["classes"]), "--episode_length", str(E), "--pretrained_model",
                          str(run / "model_final"), "--with_replacement", "--mean_feature_as_start",
                          "--compute_mAP", "--batch_size", "4", "--buckets", "16", "--metrics_json", str(metrics),
                          "--export", str(export)]) == 0
    result = json.loads(metrics.read_text())
    assert result["variant"] == "single" and result["num_videos"] == SPEC["val"]
    assert 0.0 <= result["avgpool_acc"] <= 1.0 and 0.0 <= result["avgpool_map"] <= 1.0
    records = [json.loads(x) for x in export.read_text().splitlines() if x.strip()]
    assert sorted(r["name"] for r in records) == sorted(extracted["names"]["val"])
    for r in records:
        assert r["num_clips"] == 10 and len(r["idx"]) == r["steps_taken"] == E
        assert all(0 <= k < r["num_clips"] for k in r["idx"])


@pytest.mark.slow
def test_distill_learns_from_the_extracted_teacher_logits(extracted, tmp_path):
    """l2l-distill --teacher ROOT/video_logits: the student has the video network's 400 classes, its targets are
    those files' rows (every clip of every video), the teacher files are recorded, and the loss falls."""
    from l2l_jax.programs import distill as DI
    from l2l_jax.video import distill as DL

    folder, out = extracted["root"] / "video_logits", tmp_path / "student"
    assert DI.main([str(extracted["videos"]), "--labels", str(extracted["labels"]), "--out", str(out),
                    "--teacher", str(folder), "--frame_size", "32", "--crop", "32", "--batch_size", "16",
                    "--epochs", "2", "--no_progress"]) == 0
    report = json.loads((out / "distill.json").read_text())
    assert report["objective"] == "distill" and report["num_classes"] == V.NUM_CLASSES
    assert report["settings"]["teacher"] == str(folder)
    assert (report["train_clips"], report["val_clips"]) == (10 * SPEC["train"], 10 * SPEC["val"])
    names = extracted["names"]["train"] + extracted["names"]["val"]
    want = np.concatenate([np.load(folder / f"{n}.npy") for n in names])
    got = np.load(out / "teacher_logits.npy")
    assert got.shape == want.shape == (10 * len(names), V.NUM_CLASSES)
    np.testing.assert_array_equal(got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])])
    recorded = json.loads((out / "settings.json").read_text())["settings"]
    train = {n: folder / f"{n}.npy" for n in sorted(extracted["names"]["train"])}
    assert recorded["teacher files"] == DL.files_digest(train, "teacher")
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert len(losses) == 2 and np.isfinite(losses).all() and losses[1] < losses[0], losses
