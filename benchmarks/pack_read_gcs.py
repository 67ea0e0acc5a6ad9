"""Reading a pack from gs:// (the local Cloud Storage emulator) against the same pack on local disk.

Starts the in-process emulator of the tests (tests/gcs_emulator.py), synthesises a split with
`l2l_jax.data.synthetic.generate` (the "tiny" preset's model with --videos training videos of median length
--len_median clips, float32), uploads its pickle and image/audio features to the bucket, packs it there with
`pack_pickle` (the default pack beside the pickle on the bucket) and locally, then loads --epochs training
epochs (shuffled, L ~ U{200..500} crops) and one evaluation epoch (the split's order, whole videos) through
`BatchLoader.make_batch` from each pack. Prints, per pack and mode: videos/s, `storage.read_ranges` calls per
batch and requests per batch (`storage.REQUESTS["gs"]`, one per range sent), and the machine (CPUs, load).

The emulator runs in this process and answers on 127.0.0.1, so the gs:// figures are the client's and the
emulator's CPU cost per request and byte (no network latency); on real Cloud Storage each request adds tens
of milliseconds of latency, which is why the requests per batch are the figure to watch.

    python benchmarks/pack_read_gcs.py [--videos 256] [--len_median 100] [--batch_size 32] [--epochs 2] [--no_peak]

Ends with `benchmarks/machine_peak.py --repeats 3` (the machine's matmul and memory rates) unless --no_peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from gcs_emulator import Emulator  # noqa: E402

from l2l_jax import storage  # noqa: E402
from l2l_jax.data.pack import pack_pickle  # noqa: E402
from l2l_jax.data.pipeline import BatchLoader  # noqa: E402
from l2l_jax.data.source import PackedSource  # noqa: E402
from l2l_jax.data.synthetic import PRESETS, generate  # noqa: E402


def upload(local: Path, url: str) -> None:
    """The pickle and the image/audio features of `local` to the folder `url`."""
    fs, key = storage._fs(storage.path(url))
    files = [local / "train.pkl"] + sorted((local / "image_features").iterdir()) + \
        sorted((local / "audio_features").iterdir())
    fs.put([str(p) for p in files], [f"{key}/{p.relative_to(local).as_posix()}" for p in files])


def measure(src: PackedSource, *, train: bool, epochs: int, batch_size: int) -> dict:
    """videos/s, read_ranges calls and requests per batch over `epochs` epochs."""
    calls = [0]
    real = storage.read_ranges

    def counted(p, r):
        calls[0] += 1
        return real(p, r)

    storage.read_ranges = counted
    try:
        ld = BatchLoader(src, batch_size=batch_size, train=train, seed=0, process_index=0, process_count=1)
        before = storage.REQUESTS["gs"]
        n_batches = n_videos = 0
        t = time.perf_counter()
        for e in range(epochs):
            for b in range(ld.batches_per_epoch):
                batch = ld.make_batch(e, b)
                n_videos += int(batch["valid"].sum())
                n_batches += 1
                del batch
        dt = time.perf_counter() - t
    finally:
        storage.read_ranges = real
    return {"videos/s": n_videos / dt, "batches": n_batches, "calls/batch": calls[0] / n_batches,
            "requests/batch": (storage.REQUESTS["gs"] - before) / n_batches, "seconds": dt}


def request_cost(url: str, row_bytes: int) -> str:
    """What the emulator charges per ranged GET: one range per call, 16 ranges in one `read_ranges` call
    (concurrent GETs), and the same 16 ranges as 16 calls one after the other (ms, best of 3)."""
    ranges = [(4096 + i * 64 * row_bytes, 4096 + (i * 64 + 100) * row_bytes) for i in range(16)]

    def best(fn) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times) * 1e3

    one = best(lambda: storage.read_ranges(url, ranges[:1]))
    together = best(lambda: storage.read_ranges(url, ranges))
    apart = best(lambda: [storage.read_ranges(url, [r]) for r in ranges])
    return (f"emulator, ranged GETs of 100 rows ({100 * row_bytes // 1024} KiB) from {url}: one {one:.1f} ms; 16 in "
            f"one read_ranges call (concurrent) {together:.0f} ms; 16 calls one after the other {apart:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=256)
    ap.add_argument("--len_median", type=float, default=100.0)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--no_peak", action="store_true", help="skip benchmarks/machine_peak.py (about 10 s)")
    args = ap.parse_args()
    cfg = dataclasses.replace(PRESETS["tiny"], num_train=args.videos, num_val=1, len_median=args.len_median,
                              len_min=10, len_max=700)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp, Emulator() as gcs:
        import gcsfs

        os.environ.update(gcs.env)
        os.environ["L2L_CACHE_DIR"] = str(Path(tmp) / "cache")  # a fresh validation scan, nothing left behind
        gcsfs.GCSFileSystem.clear_instance_cache()
        local = generate(Path(tmp) / "synth", config=cfg, progress=False)
        root = gcs.gs("synth")
        t = time.perf_counter()
        upload(local, root)
        print(f"upload of {2 * args.videos} feature files: {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        remote_dir = pack_pickle(f"{root}/train.pkl", progress=False)
        t_remote = time.perf_counter() - t
        t = time.perf_counter()
        local_dir = pack_pickle(local / "train.pkl", progress=False)
        t_local = time.perf_counter() - t
        remote, packed = PackedSource(remote_dir), PackedSource(local_dir)
        mib = sum(a.shape[0] * a.shape[1] * a.dtype.itemsize for a in packed.arrays) / 2**20
        print(f"split: {len(packed)} videos, {int(packed.offsets[-1])} clips, {mib:.1f} MiB of features (image + "
              f"audio, float32); l2l-pack (scan + pack): to {remote_dir} {t_remote:.1f} s, to local disk "
              f"{t_local:.1f} s")
        print(request_cost(remote.arrays[0].url, remote._row_bytes))
        print(f"batch size {args.batch_size}; K = {len(packed.keys)} modality arrays")
        print("| pack | mode | videos/s | read_ranges calls / batch | requests / batch | batches |")
        print("|---|---|---:|---:|---:|---:|")
        for name, src in (("gs:// (emulator)", remote), ("local disk", packed)):
            for mode, train, epochs in (("train", True, args.epochs), ("eval", False, 1)):
                measure(src, train=train, epochs=1, batch_size=args.batch_size)  # warm: headers, page cache
                m = measure(src, train=train, epochs=epochs, batch_size=args.batch_size)
                print(f"| {name} | {mode} | {m['videos/s']:.0f} | {m['calls/batch']:.2f} | "
                      f"{m['requests/batch']:.2f} | {m['batches']} |")
    if not args.no_peak:
        peak = Path(__file__).with_name("machine_peak.py")
        print(subprocess.run([sys.executable, str(peak), "--repeats", "3"], capture_output=True, text=True).stdout)


if __name__ == "__main__":
    main()
