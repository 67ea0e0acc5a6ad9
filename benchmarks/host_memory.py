"""Peak host memory of `l2l-train`'s training data path at ActivityNet scale (10,000 videos, batch 256).

    python benchmarks/host_memory.py [--data runs/anet10k] [--videos 10000] [--threads 1 2 10]
        [--layout dense chunk] [--batches 24] [--step_s 0.3]

Data (written once to --data, reused): --videos synthetic videos in upstream's layout, one float16 `.npy` per
video and modality, T ~ LogNormal(median 122, sigma 0.5) clipped to [10, 700], 512 wide, 200 classes; the
pickle `train.pkl`; and its float16 pack `train.pack/` beside it (`l2l-pack --float16`), which `l2l-train` then
reads on its own. About 2.9 GB per copy (files and pack). `--source files` reads the per-file features instead
(float32 batches, twice the bytes, as upstream converts them).

Each (source, layout, --decode_threads) runs in a fresh process (`--child`), so its peak is its own: the flags are
resolved as `l2l-train` resolves them (the published flags: batch 256, `--decode_threads N`; `cli.resolve`),
the split is opened and the training loader built and iterated exactly as `training.loop` does
(`config.settings`, `Settings.train_loader`, `loader.iterator`), and every batch is put on the device
mesh (`parallel.shard_batch`; on a CPU backend that is a copy in host memory, counted too), waited for, and
held for --step_s seconds, standing in for the train step (a slow step: the batches made ahead pile up to the
loader's bound, the worst case for memory). The model and its step are left out: on a GPU or TPU they live in
device memory; this measures what the host holds for the data. Printed per run: the peak resident set of the
process (VmHWM, the kernel's high-water mark of RSS: anonymous memory plus mapped file pages), its RSS before
the loader was made (Python, jax, numpy), and RssAnon and RssFile at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PUBLISHED = ["--batch_size", "256", "--warmup_epochs", "0", "--epochs", "25", "--lr", "0.01", "--milestones", "15",
             "20", "--momentum", "0.9", "--scheduler", "--num_classes", "200", "--checkpoint_freq", "10",
             "--episode_length", "10", "--freeze_imageAudioNet", "--with_avgpool_ce_loss", "--compute_mAP",
             "--mean_feature_as_start", "--subsample_factor", "1", "--with_replacement"]


def make_data(root: Path, n: int) -> None:
    """The synthetic split, its pickle and its float16 pack (skipped when the pack is there)."""
    from l2l_jax.data.index import write_index
    from l2l_jax.data.pack import pack_pickle

    if (root / "train.pack" / "meta.json").exists():
        return
    rng = np.random.default_rng(0)
    lengths = np.clip(np.round(rng.lognormal(np.log(122), 0.5, n)), 10, 700).astype(int)
    pool = np.maximum(rng.standard_normal(1 << 22, np.float32), 0).astype(np.float16)  # values to slice from
    for d in ("image_features", "audio_features"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(lengths):
        for d in ("image_features", "audio_features"):
            start = int(rng.integers(0, len(pool) - t * 512))
            np.save(root / d / f"v{i:05d}.npy", pool[start : start + t * 512].reshape(t, 512))
    write_index(root / "train.pkl", [f"imageAudio_features/v{i:05d}.npy" for i in range(n)],
                [i % 200 for i in range(n)])
    pack_pickle(root / "train.pkl", float16=True, num_classes=200, progress=False)


def proc_status() -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process, in MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) / 1024
    return out


def child(args: argparse.Namespace) -> None:
    """One run: l2l-train's loader path with --decode_threads args.threads[0]; prints one JSON line."""
    import jax

    from l2l_jax import config, parallel
    from l2l_jax.data.source import open_split
    from l2l_jax.programs import flags as program_flags

    threads, layout = args.threads[0], args.layout[0]
    cfg = program_flags.resolve("train", [*PUBLISHED, "--train_dataset_file", str(Path(args.data) / "train.pkl"),
                                "--decode_threads", str(threads), "--layout", layout,
                                "--checkpoint_path", str(Path(args.data) / "unused_run")], "host memory")
    settings = config.settings(cfg, "train")
    mesh = parallel.make_mesh()
    packed = None if args.source[0] == "packed" else False  # None: the pack beside the pickle, as l2l-train
    src = open_split(settings.data.train_file, packed=packed, **settings.data.split_options(progress=False))
    base = proc_status()
    loader = settings.train_loader(src)
    batches = loader.iterator(num_epochs=1)
    n = min(args.batches, loader.batches_per_epoch)
    for _ in range(n):
        batch = next(batches)
        batch = parallel.shard_batch(batch, mesh, settings.layout)
        jax.block_until_ready(batch)
        time.sleep(args.step_s)
    end = proc_status()
    print(json.dumps({"layout": layout, "threads": threads, "kind": src.kind, "dtype": str(loader.feature_dtype),
                      "batches": n, "peak_mib": end["VmHWM"], "base_mib": base["VmRSS"],
                      "anon_mib": end["RssAnon"], "file_mib": end["RssFile"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT / "runs" / "anet10k"), help="where the split is written (reused)")
    ap.add_argument("--videos", type=int, default=10000)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 10], help="--decode_threads values")
    ap.add_argument("--layout", nargs="+", default=["dense", "chunk"], choices=["dense", "chunk"])
    ap.add_argument("--source", nargs="+", default=["packed", "files"], choices=["packed", "files"],
                    help="packed: the float16 pack l2l-train finds beside the pickle (float16 batches); files: "
                         "the per-file features (float32 batches, as upstream converts them)")
    ap.add_argument("--batches", type=int, default=24, help="batches consumed per run")
    ap.add_argument("--step_s", type=float, default=0.3, help="seconds each stand-in step sleeps")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    root = Path(args.data)
    make_data(root, args.videos)
    print(f"data: {root} ({args.videos} videos, float16 pack); published flags, batch 256; {args.batches} batches "
          f"per run, stand-in step + {args.step_s} s")
    print("| source | layout | --decode_threads | peak RSS (VmHWM) MiB | RSS before the loader | RssAnon at end | "
          "RssFile at end |\n|---|---|---:|---:|---:|---:|---:|")
    for source in args.source:
        for layout in args.layout:
            for t in args.threads:
                cmd = [sys.executable, __file__, "--child", "--data", args.data, "--threads", str(t), "--layout",
                       layout, "--source", source, "--batches", str(args.batches), "--step_s", str(args.step_s)]
                env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
                r = json.loads(out.strip().splitlines()[-1])
                print(f"| {r['kind']} ({r['dtype']}) | {layout} | {t} | {r['peak_mib']:.0f} | {r['base_mib']:.0f} | "
                      f"{r['anon_mib']:.0f} | {r['file_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
