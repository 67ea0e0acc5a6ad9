"""``l2l-convert``: upstream PyTorch checkpoints <-> l2l-jax model directories.

    l2l-convert imageaudionet --torch ImageAudioNet_ActivityNet.pth --out DIR   # fusion net + classifier
    l2l-convert preview --torch model_final.pth --out DIR [--variant single]    # a trained preview model
    l2l-convert export --flax DIR --out model.pth                               # back to upstream's format

The directory format is documented in `l2l_jax.model_dir`; the checks and the exported file in `l2l_jax.pth_convert`.
Any of --torch, --flax and --out may be a URL (``gs://bucket/...``, `l2l_jax.storage`).
Bad input (a flag, an output path that cannot take the result, a file that is not a checkpoint or not a
model) ends the program with one line naming the file and exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from l2l_jax import storage, variants
from l2l_jax.errors import ConfigError
from l2l_jax.model_dir import is_interrupted_write, is_model_dir
from l2l_jax.outputs import output_dir, output_file, writing
from l2l_jax.programs.flags import add_common, run_program
from l2l_jax.pth_convert import convert_file, export_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2l-convert",
                                description="upstream PyTorch checkpoints <-> l2l-jax model directories")
    sub = p.add_subparsers(dest="command", required=True)
    ia = sub.add_parser(variants.IMAGEAUDIONET,
                        help="upstream ImageAudioNet checkpoint (fusion net + classifier) -> DIR")
    pv = sub.add_parser("preview", help="upstream preview-model checkpoint (e.g. model_final.pth) -> DIR")
    pv.add_argument("--variant", choices=variants.NAMES, default=variants.DEFAULT.name,
                    help="two-modality (repo root, default) or the single-modality variant")
    for s in (ia, pv):
        s.add_argument("--torch", required=True, metavar="PTH", help="upstream .pth (loaded weights-only)")
        add_common(s, "out", out={"required": True, "metavar": "DIR", "help": "model directory to write"})
    ex = sub.add_parser("export", help="model DIR -> upstream-format .pth")
    ex.add_argument("--flax", required=True, metavar="DIR", help="model directory written by this tool")
    add_common(ex, "out", out={"required": True, "metavar": "PTH", "help": ".pth to write"})
    for s in (ia, pv, ex):
        s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
        add_common(s, "debug")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the converter; returns the exit status (0 ok, 2 with one line naming the file or flag on bad
    input: `l2l_jax.programs.flags.run_program`)."""
    return run_program("convert", lambda: _main(argv), argv)


def check_out(args: argparse.Namespace) -> None:
    """Before anything is read: --out can take what the subcommand writes (a .pth file for export, a model
    directory otherwise), and an existing --out is replaced only with --overwrite, and only if it is of that
    kind (`l2l_jax.outputs`; on a bucket also a folder an interrupted write left without its meta.json)."""
    given, out = storage.path(args.out), storage.absolute(args.out)
    if args.command == "export":
        output_file(given, "--out")
        if out.exists() and not args.overwrite:
            raise ConfigError(f"--out {out}: already exists (pass --overwrite to replace it)")
        return
    output_dir(given, "--out")
    if out.exists():
        if not args.overwrite:
            raise ConfigError(f"--out {out}: already exists (pass --overwrite to replace it)")
        if not (is_model_dir(out) or is_interrupted_write(out)):
            raise ConfigError(f"--out {out}: exists and is not a model directory; refusing to replace "
                              "it (choose another --out)")
    if not storage.is_url(out):
        output_dir(out.parent, "--out")


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_out(args)
    with writing(args.out, "--out"):
        try:
            if args.command == "export":
                out = export_file(args.flax, args.out, overwrite=args.overwrite)
                print(f"wrote {out}")
            else:
                variant = variants.IMAGEAUDIONET if args.command == variants.IMAGEAUDIONET else args.variant
                out, meta = convert_file(args.torch, args.out, variant, overwrite=args.overwrite)
                print(f"wrote {out} (variant {variant}, {meta['num_classes']} classes, "
                      f"feature width {meta['feature_dim']})")
        except (FileExistsError, FileNotFoundError) as e:  # the message names the path
            raise ConfigError(str(e)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
