"""`l2l-synth`: an embedded synthetic dataset in upstream's layout, for running everything without downloads.

    l2l-synth --out DIR [--preset tiny|default|activitynet] [--seed N] [--num_train N] [--num_val N]

writes `DIR/train.pkl`, `DIR/val.pkl`, the per-video features and `segments.json`; same seed, same bytes. The
generative model: `l2l_jax.data.synthetic`. A bad flag or --out ends it with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace

from l2l_jax.data.synthetic import DIRS, PRESETS, generate
from l2l_jax.errors import ConfigError
from l2l_jax.outputs import output_dir, output_file, writing
from l2l_jax.programs import flags


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `l2l-synth`; returns the exit status (2 with one line for a bad flag or --out)."""
    return flags.run_program("synth", lambda: _main(argv), argv)


def build_parser() -> argparse.ArgumentParser:
    """The flags of `l2l-synth`."""
    ap = argparse.ArgumentParser(prog="l2l-synth", description=__doc__.split("\n")[0])
    flags.add_common(ap, "out", "seed", out={"required": True, "help": "output folder"},
                     seed={"help": "seed of every random draw (same seed, same bytes)"})
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default",
                    help="dataset size and knobs: tiny (tests), default (the demo), activitynet (benchmarks)")
    ap.add_argument("--num_train", type=int, default=None, help="number of training videos (default: the preset's)")
    ap.add_argument("--num_val", type=int, default=None, help="number of validation videos (default: the preset's)")
    ap.add_argument("--dtype", choices=("float32", "float16"), default=None,
                    help="storage type of the features (default: the preset's)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    flags.add_common(ap, "debug")
    return ap


def _main(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    for k in ("num_train", "num_val"):
        if getattr(args, k) is not None and getattr(args, k) < 1:
            raise ConfigError(f"--{k} {getattr(args, k)}: must be at least 1")
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed}: must be 0 or more")
    cfg = PRESETS[args.preset]
    for k in ("num_train", "num_val", "dtype"):
        if getattr(args, k) is not None:
            cfg = replace(cfg, **{k: getattr(args, k)})
    out = output_dir(args.out, "--out")
    away = "move it away or choose another --out"
    for d in DIRS:
        output_dir(out / d, "--out", advice=away)
    for name in ("train.pkl", "val.pkl", "segments.json"):
        output_file(out / name, "--out", advice=away)
    t0 = time.perf_counter()
    with writing(out, "--out"):
        out = generate(out, preset=args.preset, seed=args.seed, config=cfg, progress=not args.quiet)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out}: {cfg.num_train} train / {cfg.num_val} val videos, {cfg.num_classes} classes, "
          f"{size / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    raise SystemExit(main())
