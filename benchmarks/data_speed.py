"""Input pipeline speed, videos/s: the upstream way vs our per-file loader vs our packed loader.

- upstream way: `torch.Tensor(np.load(path))` per file and modality, then upstream's collate (Python `random`
  window and crops, zero padding by concatenation, last-clip fill, mask, `torch.stack`), in one process with
  one torch thread, as each of upstream's DataLoader workers runs;
- ours, per-file: `BatchLoader.make_batch` on a `FileSource` (reads only the rows a batch keeps, straight into
  the bucket-padded batch), one thread, and through `BatchLoader.iterator` (batches made ahead on a background
  thread, each batch's rows read by --threads threads together), as `l2l-train` consumes them;
- ours, packed: the same on a `l2l-pack` copy (float32, and float16).

Data: --videos synthetic videos of upstream's layout, float32, 512 wide, T uniform in [--min_len, --max_len]
(ActivityNet-like), written to --data (kept, reused). Files sit in the page cache (a warm second pass), so this
measures CPU cost, not the disk. Prints one table per mode (train: L ~ U{200..500} crops; eval: pad to the
longest).

    python benchmarks/data_speed.py [--videos 512] [--batch_size 64] [--threads 2]
    python benchmarks/data_speed.py --pack runs/anet10k/train.pack --batch_size 256 --threads 4 [--passes 3]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from l2l_jax.data.index import (
    load_index,  # noqa: E402
    write_index,  # noqa: E402
)
from l2l_jax.data.pack import pack_pickle  # noqa: E402
from l2l_jax.data.pipeline import BatchLoader  # noqa: E402
from l2l_jax.data.source import open_split  # noqa: E402


def make_data(root: Path, n: int, lo: int, hi: int) -> None:
    if (root / "train.pkl").exists():
        return
    rng = np.random.default_rng(0)
    for d in ("image_features", "audio_features"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        T = int(rng.integers(lo, hi + 1))
        for d in ("image_features", "audio_features"):
            np.save(root / d / f"v{i:05d}.npy", np.maximum(rng.standard_normal((T, 512), np.float32), 0))
    write_index(root / "train.pkl", [f"imageAudio_features/v{i:05d}.npy" for i in range(n)],
                [i % 200 for i in range(n)])


def upstream_collate(items, train: bool, rnd: random.Random):
    """Upstream's collate written the way a PyTorch data loader does it (torch tensors, cat, stack)."""
    lengths = [x[0].shape[0] for x in items]
    L = max(lengths)
    if train:
        L = min(rnd.randint(200, 500), L)
    images, audios = [], []
    for (img, aud, _, _), n in zip(items, lengths, strict=True):
        if n < L:
            pad = torch.zeros(L - n, img.shape[1])
            img, aud = torch.cat([img, pad]), torch.cat([aud, pad])
        elif n > L:
            s = rnd.randint(0, n - L)
            img, aud = img[s : s + L], aud[s : s + L]
        images.append(img)
        audios.append(aud)
    for b, n in enumerate(lengths):
        for p in range(n, 10):
            images[b][p] = images[b][n - 1]
            audios[b][p] = audios[b][n - 1]
    mask = torch.zeros(len(items), L)
    for b, n in enumerate(lengths):
        mask[b, : max(10, n)] = 1
    labels = torch.LongTensor([x[2] for x in items])
    return torch.stack(images), torch.stack(audios), mask, labels, np.array([x[3] for x in items])


def run_upstream(pickle: Path, batch_size: int, train: bool) -> float:
    torch.set_num_threads(1)  # as in a PyTorch DataLoader worker (2 threads here are erratic: 30x slower at times)
    index = load_index(pickle)
    order = list(range(len(index)))
    rnd = random.Random(0)
    if train:
        rnd.shuffle(order)
    t0 = time.perf_counter()
    for s in range(0, len(order), batch_size):
        items = []
        for i in order[s : s + batch_size]:
            ip, ap = index.paths[i]
            items.append((torch.Tensor(np.load(ip)), torch.Tensor(np.load(ap)), int(index.labels[i]), i))
        upstream_collate(items, train, rnd)
    return len(order) / (time.perf_counter() - t0)


def run_ours(source, batch_size: int, train: bool, threads: int, epochs: int = 4) -> float:
    """Videos/s over `epochs` epochs: make_batch in this thread (threads=0) or the prefetching iterator."""
    loader = BatchLoader(source, batch_size=batch_size, train=train, seed=0, num_threads=max(threads, 1),
                         process_index=0, process_count=1)
    t0 = time.perf_counter()
    if threads == 0:
        for e in range(epochs):
            for b in range(loader.batches_per_epoch):
                batch = loader.make_batch(e, b)
                del batch  # a consumer drops each batch after use
    else:
        for batch in loader.iterator(num_epochs=epochs):
            del batch
    return epochs * len(source) / (time.perf_counter() - t0)


def run_pack(pack: str, batch_size: int, threads: int, passes: int) -> None:
    """Our training loader alone on an existing pack (e.g. the ActivityNet-scale one `host_memory.py` writes):
    videos/s of each pass over the split, one loader throughout, and the process's peak resident set."""
    source = open_split(pack, num_classes=2**31 - 1, progress=False)  # labels are not what is measured
    print(f"{pack}: {len(source)} videos, mean {source.lengths.mean():.0f} clips, {source.dtype}; batch {batch_size}, "
          f"training batches (dense); load average {os.getloadavg()[0]:.1f}")
    for t in (1, threads):
        loader = BatchLoader(source, batch_size=batch_size, train=True, seed=0, num_threads=t, process_index=0,
                             process_count=1)
        rates = []
        for e in range(passes):
            t0 = time.perf_counter()
            n = sum(int(b["valid"].sum()) for b in loader.iterator(num_epochs=1, start_epoch=e))
            rates.append(n / (time.perf_counter() - t0))
        peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024
        print(f"{t} thread(s), iterator: " + ", ".join(f"{r:.0f}" for r in rates) + f" videos/s per pass "
              f"(median {np.median(rates):.0f}); peak RSS so far {peak:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "l2l_data_speed"),
                    help="where the benchmark writes its videos (reused when present)")
    ap.add_argument("--videos", type=int, default=512)
    ap.add_argument("--min_len", type=int, default=50)
    ap.add_argument("--max_len", type=int, default=400)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="best of N passes")
    ap.add_argument("--pack", default=None, help="instead of the tables: our loader alone on this existing pack "
                    "(e.g. runs/anet10k/train.pack from host_memory.py), 1 and --threads threads, --passes passes")
    ap.add_argument("--passes", type=int, default=3, help="passes over the split with --pack")
    args = ap.parse_args()
    if args.pack:
        run_pack(args.pack, args.batch_size, args.threads, args.passes)
        return
    root = Path(args.data)
    make_data(root, args.videos, args.min_len, args.max_len)
    pkl = root / "train.pkl"
    kw = dict(num_classes=200, progress=False)
    files = open_split(pkl, packed=False, **kw)
    for name, f16 in (("pack32", False), ("pack16", True)):
        if not (root / name / "meta.json").exists():
            pack_pickle(pkl, root / name, float16=f16, progress=False)
    pack32, pack16 = open_split(root / "pack32", **kw), open_split(root / "pack16", **kw)
    clips = int(files.lengths.sum())
    print(f"{len(files)} videos, T in [{files.lengths.min()}, {files.lengths.max()}] (mean {clips / len(files):.0f}), "
          f"512 wide, {clips * 512 * 4 * 2 / 2**20:.0f} MiB float32 (image+audio); batch {args.batch_size}; "
          f"torch {torch.__version__}; best of {args.repeats}; load average {os.getloadavg()[0]:.1f}")
    rows = [
        ("upstream way: np.load per file + upstream collate (torch)", lambda t: run_upstream(pkl, args.batch_size, t)),
        ("ours, per-file, 1 thread", lambda t: run_ours(files, args.batch_size, t, 0)),
        (f"ours, per-file, {args.threads} threads, iterator",
         lambda t: run_ours(files, args.batch_size, t, args.threads)),
        ("ours, packed float32, 1 thread", lambda t: run_ours(pack32, args.batch_size, t, 0)),
        (f"ours, packed float32, {args.threads} threads, iterator",
         lambda t: run_ours(pack32, args.batch_size, t, args.threads)),
        ("ours, packed float16, 1 thread", lambda t: run_ours(pack16, args.batch_size, t, 0)),
        (f"ours, packed float16, {args.threads} threads, iterator",
         lambda t: run_ours(pack16, args.batch_size, t, args.threads)),
    ]
    for train in (True, False):
        for _, fn in rows:
            fn(train)  # warm the page cache and the code paths
        best = [0.0] * len(rows)
        for _ in range(args.repeats):  # round robin, so a transient stall of the machine hits one sample
            for k, (_, fn) in enumerate(rows):
                best[k] = max(best[k], fn(train))
        print(f"\n{'train (L ~ U{200..500}, crops)' if train else 'eval (pad to the longest)'}")
        print(f"| {'loader':<58} | videos/s | vs upstream |\n|{'-' * 60}|---------:|------------:|")
        for (name, _), v in zip(rows, best, strict=True):
            print(f"| {name:<58} | {v:8.0f} | {v / best[0]:10.1f}x |")

if __name__ == "__main__":
    main()
