"""`l2l-pack`: a split's per-video `.npy` files -> one memory-mapped array per modality plus offsets.

    l2l-pack train.pkl val.pkl [--feature_root DIR] [--num_classes C] [--float16] [--skip_bad_videos]

writes `<stem>.pack/` beside each pickle (or `--out DIR` for a single pickle), where the loader finds it on its
own. What a pack holds and when it is used: `l2l_jax.data.pack`. Errors are one line naming the file and exit
status 2 (`l2l_jax.programs.flags.run_program`). Pickles, --feature_root and --out may be URLs (``gs://...``):
a pack on a bucket is uploaded with its `meta.json` last.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

from l2l_jax import storage, variants
from l2l_jax.data.pack import pack_pickle
from l2l_jax.data.source import PACK_FORMAT, default_pack_dir
from l2l_jax.errors import ConfigError
from l2l_jax.outputs import output_dir
from l2l_jax.programs import flags

#: The files a pack holds (`l2l_jax.data.pack`).
PACK_FILES = frozenset({"meta.json", "sources.json", "offsets.npy", "labels.npy", "ids.npy", "names.json",
                        *(f"{k}.npy" for keys in variants.MODALITY_KEYS.values() for k in keys)})


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `l2l-pack`; returns the exit status (2 with a one-line message naming the file for bad input)."""
    return flags.run_program("pack", lambda: _main(argv), argv)


def build_parser() -> argparse.ArgumentParser:
    """The flags of `l2l-pack`."""
    ap = argparse.ArgumentParser(prog="l2l-pack", description=__doc__.split("\n")[0])
    ap.add_argument("pickles", nargs="+", help="upstream dataset pickles (train.pkl, val.pkl, ...)")
    flags.add_common(ap, "out", out={"help": "pack directory (one pickle only; default <stem>.pack beside it)"})
    ap.add_argument("--variant", choices=variants.NAMES, default=variants.DEFAULT.name,
                    help="which features the pickle names: two-modality (image+audio) or single-modality")
    ap.add_argument("--feature_root", default=None, help=f"replaces everything before {variants.TEMPLATE_DIR}")
    ap.add_argument("--num_classes", type=int, default=None, help="check labels in [0, C)")
    ap.add_argument("--width", type=int, default=512, help="expected feature width (0: any)")
    ap.add_argument("--float16", action="store_true", help="store float16 (half the bytes)")
    ap.add_argument("--skip_bad_videos", action="store_true", help="drop bad videos instead of failing")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    flags.add_common(ap, "debug")
    return ap


def check_pack_out(out: storage.AnyPath) -> None:
    """`out` can become the pack (`l2l_jax.outputs.output_dir`) and is not a directory of something else that
    packing would replace; its temporary sibling is not a file (a bucket has none: the pack is built locally)."""
    out = output_dir(out, "--out")
    if out.is_dir() and any(out.iterdir()):
        try:
            meta = json.loads((out / "meta.json").read_text())
        except (OSError, ValueError):
            meta = None
        # on a bucket, an upload that failed leaves a pack's files without meta.json: packing again replaces it
        half_written = storage.is_url(out) and all(p.name in PACK_FILES for p in out.iterdir())
        if (not isinstance(meta, dict) or meta.get("format") != PACK_FORMAT) and not half_written:
            raise ConfigError(f"--out {out}: exists and is not a pack directory; refusing to replace it (choose "
                              "another --out)")
    if storage.is_url(out):
        return
    tmp = out.with_name(out.name + ".tmp")
    if os.path.lexists(tmp) and not tmp.is_dir():
        raise ConfigError(f"--out {out}: {tmp} is in the way (packing writes there first); move it away")


def _main(argv: Sequence[str] | None) -> None:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.out and len(args.pickles) > 1:
        ap.error("--out needs a single pickle")
    for p in args.pickles:  # every output before any work
        check_pack_out(storage.path(args.out) if args.out else default_pack_dir(p))
    for p in args.pickles:
        out = pack_pickle(p, args.out, variant=args.variant, feature_root=args.feature_root,
                          num_classes=args.num_classes, width=args.width or None, float16=args.float16,
                          skip_bad_videos=args.skip_bad_videos, progress=not args.quiet)
        storage.forget_listings(out)  # a bucket client's cached listing predates the upload
        meta = json.loads((out / "meta.json").read_text())
        print(f"{p} -> {out} ({meta['num_videos']} videos, {meta['total_clips']} clips, {meta['dtype']})")


if __name__ == "__main__":
    raise SystemExit(main())
