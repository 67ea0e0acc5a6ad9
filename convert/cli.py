"""``l2l-convert``: upstream PyTorch checkpoints <-> l2l-jax model directories.

    l2l-convert imageaudionet --torch ImageAudioNet_ActivityNet.pth --out DIR   # fusion net + classifier
    l2l-convert preview --torch model_final.pth --out DIR [--variant single]    # a trained preview model
    l2l-convert export --flax DIR --out model.pth                               # back to upstream's format

The directory format is documented in `l2l_jax.model_dir`; the checks and the exported file in `convert.core`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from convert.core import convert_file, export_file
from convert.torch_io import ConversionError
from l2l_jax.model_dir import NotAModelDirError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2l-convert",
                                description="upstream PyTorch checkpoints <-> l2l-jax model directories")
    sub = p.add_subparsers(dest="command", required=True)
    ia = sub.add_parser("imageaudionet", help="upstream ImageAudioNet checkpoint (fusion net + classifier) -> DIR")
    pv = sub.add_parser("preview", help="upstream preview-model checkpoint (e.g. model_final.pth) -> DIR")
    pv.add_argument("--variant", choices=("two", "single"), default="two",
                    help="two-modality (repo root, default) or the single-modality variant")
    for s in (ia, pv):
        s.add_argument("--torch", required=True, metavar="PTH", help="upstream .pth (loaded weights-only)")
        s.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    ex = sub.add_parser("export", help="model DIR -> upstream-format .pth")
    ex.add_argument("--flax", required=True, metavar="DIR", help="model directory written by this tool")
    ex.add_argument("--out", required=True, metavar="PTH", help=".pth to write")
    for s in (ia, pv, ex):
        s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the converter; returns the exit status (0 ok, 1 on a conversion error)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "export":
            out = export_file(args.flax, args.out, overwrite=args.overwrite)
            print(f"wrote {out}")
        else:
            variant = "imageaudionet" if args.command == "imageaudionet" else args.variant
            out, meta = convert_file(args.torch, args.out, variant, overwrite=args.overwrite)
            print(f"wrote {out} (variant {variant}, {meta['num_classes']} classes, "
                  f"feature width {meta['feature_dim']})")
    except (ConversionError, NotAModelDirError, FileExistsError, FileNotFoundError) as e:
        print(f"l2l-convert: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
