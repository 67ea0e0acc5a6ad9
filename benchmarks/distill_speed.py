"""`l2l-distill`'s training speed, clips/s: our jitted step vs a straightforward PyTorch training loop.

Same networks (VisualNet + AudioNet resnet18s, the fusion net and classifier; random weights), same batch
(--batch_size clips: uint8 frames --crop x --crop normalised in the step, 101 x 40 log-mels, teacher logits of
--classes classes), same objective (distillation KL at temperature 4), same optimizer (Adam), train-mode
BatchNorm. Host data is made once and reused, so this times the training step only (the clip cache's reads
are memory copies of a few hundred kB per batch):

- PyTorch: ``tests/torch_video_reference.py``'s Student, eager, all torch threads: zero_grad, forward,
  loss, backward, ``optimizer.step()`` per batch;
- ours: `l2l_jax.video.distill_step.jit_train_step` on every device (compiled in a warm-up step, not timed),
  batches put on the devices each step as l2l-distill does.

Each round times --steps steps of each, alternating (ours, PyTorch); the figures are medians of --rounds
rounds. The machine's own ceilings (`benchmarks/machine_peak.py`) are printed beside them.

    python benchmarks/distill_speed.py [--batch_size 16] [--crop 112] [--steps 4] [--rounds 3] [--precision exact]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import torch_video_reference as tvr  # noqa: E402

from l2l_jax import numerics  # noqa: E402
from l2l_jax.video.frames import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def make_batch(rng: np.random.Generator, b: int, crop: int, classes: int) -> dict[str, np.ndarray]:
    return {"frames": rng.integers(0, 256, (b, crop, crop, 3), dtype=np.uint8),
            "logmel": rng.standard_normal((b, 101, 40)).astype(np.float32),
            "target": (3 * rng.standard_normal((b, classes))).astype(np.float32)}


class TorchLoop:
    """The straightforward PyTorch loop."""

    def __init__(self, classes: int):
        torch.manual_seed(0)
        self.model = tvr.Student(classes).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def step(self, batch: dict[str, np.ndarray]) -> float:
        frames = torch.from_numpy(batch["frames"]).permute(0, 3, 1, 2).float() / 255.0
        images = (frames - self.mean) / self.std
        spec = torch.from_numpy(batch["logmel"])[:, None]
        self.opt.zero_grad()
        loss = tvr.distill_loss(self.model(images, spec), torch.from_numpy(batch["target"]), 4.0)
        loss.backward()
        self.opt.step()
        return loss.item()


class JaxLoop:
    """l2l-distill's step."""

    def __init__(self, classes: int, precision: str):
        from l2l_jax import numerics, parallel
        from l2l_jax.video import distill_step as S

        self.parallel = parallel
        self.mesh = parallel.make_mesh()
        model, tx = S.Student(classes, numerics.get(precision)), S.make_optimizer("adam", 1e-4)
        self.state = parallel.replicate(S.init_state(S.student_variables(classes), tx), self.mesh)
        self.fn = S.jit_train_step(S.train_step_fn(model, tx, "distill", 4.0), self.mesh)

    def step(self, batch: dict[str, np.ndarray]) -> float:
        self.state, m = self.fn(self.state, self.parallel.shard_batch(batch, self.mesh))
        return float(m["loss"])


def clips_per_s(loop, batches: list[dict], steps: int) -> float:
    t0 = time.perf_counter()
    for k in range(steps):
        loop.step(batches[k % len(batches)])
    return steps * len(batches[0]["frames"]) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--crop", type=int, default=112)
    ap.add_argument("--classes", type=int, default=400)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", choices=numerics.PRECISIONS, default=numerics.DEFAULT.name)
    ap.add_argument("--no_peak", action="store_true", help="skip machine_peak.py's figures")
    args = ap.parse_args(argv)
    import jax

    rng = np.random.default_rng(0)
    batches = [make_batch(rng, args.batch_size, args.crop, args.classes) for _ in range(2)]
    ours, theirs = JaxLoop(args.classes, args.precision), TorchLoop(args.classes)
    t0 = time.perf_counter()
    ours.step(batches[0])  # compile
    compile_s = time.perf_counter() - t0
    theirs.step(batches[0])  # warm-up
    rows = []
    for r in range(args.rounds):
        a = clips_per_s(ours, batches, args.steps)
        b = clips_per_s(theirs, batches, args.steps)
        rows.append((a, b))
        print(f"round {r + 1}: ours {a:.2f} clips/s, PyTorch {b:.2f} clips/s, ratio {a / b:.2f}x", flush=True)
    a, b = statistics.median(x for x, _ in rows), statistics.median(y for _, y in rows)
    ratio = statistics.median(x / y for x, y in rows)
    print(f"\ndistill training step, batch {args.batch_size}, frames {args.crop}x{args.crop}, log-mel 101x40, "
          f"{args.classes} classes, precision {args.precision}, {jax.device_count()} {jax.default_backend()} "
          f"device(s), torch {torch.__version__} with {torch.get_num_threads()} threads")
    print(f"median of {args.rounds} rounds of {args.steps} steps: ours {a:.2f} clips/s, PyTorch {b:.2f} clips/s, "
          f"ratio {ratio:.2f}x (compile {compile_s:.1f} s, not timed)")
    if not args.no_peak:
        import machine_peak

        print("\nthis machine's ceilings (benchmarks/machine_peak.py):", flush=True)
        machine_peak.main(["--repeats", "5"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
