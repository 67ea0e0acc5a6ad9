"""Evaluation speed: `l2l-eval`'s evaluator vs a straightforward PyTorch evaluation of the same model, same data.

    python benchmarks/eval_speed.py [--data DIR] [--preset activitynet|default|tiny] [--model PATH]
                                    [--batch_size 256] [--no-packed] [--repeats 2] [--layout auto|dense|chunk]

Data: the synthetic val split (`l2l-synth`, generated into --data if missing; default preset `activitynet`:
1024 videos, T ~ LogNormal(median 120, sigma 0.5) in [10, 700], 200 classes), read from its float16 pack
(`l2l-pack`, made once if missing; --no-packed reads the per-video .npy files). Model: --model (anything
`--pretrained_model` takes) or a freshly initialised one; README eval flags (mean start, no repeats,
interpolation with s = 1, E = 10). Both sides use the same start clips (ours are drawn, then fed to torch).

PyTorch side (`tests/torch_reference.py`): all features preloaded in memory as float32 tensors, upstream's
batches in dataset order, upstream's eval collate, `torch.no_grad()`, default thread count, then the same numpy
metrics. Ours: the `Evaluator` as `l2l-eval` builds it from the same flags (`l2l_jax.config`: features read
by the loader, sorted by length, one executable per bucket), timed without compilation (reported
separately), without and with the baselines; one evaluator each, run --repeats times and the last run
reported (only the first compiles; it also pulls the files into memory, which the PyTorch side gets for
free by preloading). Prints a table of videos/s and the ratio, and on a GPU or TPU whose peaks
`step_cost.PEAKS` knows, the roofline bound of our evaluator over the same batches beside the measured rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import step_cost  # noqa: E402

from l2l_jax import config, layouts, numerics, weights  # noqa: E402
from l2l_jax.data.pack import pack_pickle  # noqa: E402
from l2l_jax.data.source import open_split  # noqa: E402
from l2l_jax.data.synthetic import PRESETS, generate  # noqa: E402
from l2l_jax.evaluation.evaluator import Evaluator  # noqa: E402
from l2l_jax.metrics import VideoMetrics  # noqa: E402
from l2l_jax.model import PreviewConfig, build_model, init_variables  # noqa: E402
from l2l_jax.programs import flags as program_flags  # noqa: E402

#: README's evaluation flags (mean start, no repeated clips, interpolation with s = 1, E = 10).
README_EVAL = ["--episode_length", "10", "--mean_feature_as_start", "--with_replacement", "--feature_interpolate",
               "--subsample_factor", "1"]


def torch_eval(variables, source, cfg: PreviewConfig, batch_size: int, starts: dict[int, int]) -> tuple[dict, float]:
    """The plain PyTorch evaluation; returns (metrics, seconds) -- preloading excluded."""
    import torch
    import torch_reference as tr

    from l2l_jax import torch_names

    model = tr.from_state_dict(torch_names.to_state_dict(variables, "two"), "two",
                               mean_feature_as_start=cfg.mean_feature_as_start,
                               with_replacement=cfg.with_replacement, feature_interpolate=cfg.feature_interpolate,
                               subsample_factor=cfg.subsample_factor).eval()
    items = []
    for i in range(len(source)):
        img, aud = source.read(i)
        items.append((torch.from_numpy(np.asarray(img, np.float32)), torch.from_numpy(np.asarray(aud, np.float32)),
                      int(source.labels[i]), int(source.ids[i])))
    vm = VideoMetrics(cfg.num_classes, "two")
    t0 = time.perf_counter()
    with torch.no_grad():
        for b0 in range(0, len(items), batch_size):
            batch = tr.eval_collate(items[b0:b0 + batch_size])
            start = torch.tensor([starts[int(i)] for i in batch[4]], dtype=torch.int64)
            avgpool, lstm, _ = tr.forward_batch(model, batch, cfg.episode_length, False, start)
            vm.update(batch[4], batch[3].numpy(), avgpool.numpy(), lstm.numpy())
    seconds = time.perf_counter() - t0
    return vm.result(), seconds


def roofline_rate(evaluator: Evaluator, variables, loader, precision: str) -> float | None:
    """Videos/s the roofline allows our evaluator on this device (`step_cost.estimate` of every batch's
    executable, summed over the batches), or None where `step_cost.PEAKS` does not know the chip."""
    if step_cost.chip_of_device(jax.devices()[0].device_kind) is None:
        return None
    from l2l_jax import parallel
    from l2l_jax.evaluation.evaluator import _shard, _signature

    dev_vars = parallel.replicate(dict(variables), evaluator.mesh)
    seen: dict = {}
    seconds, videos = 0.0, 0
    for batch in loader:
        dev = _shard(dict(batch), evaluator.mesh, evaluator.layout)
        sig = _signature(dev)
        if sig not in seen:
            args = (dev_vars, dev, evaluator._key)
            exe = evaluator._jitted.lower(*args).compile()
            seen[sig] = step_cost.estimate(evaluator._jitted, args, exe, precision, len(batch["index"]))["step_s"]
        seconds += seen[sig]
        videos += int(np.sum(batch["valid"]))
    return videos / seconds if seconds else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="default: runs/bench_<preset>")
    ap.add_argument("--preset", default="activitynet", choices=sorted(PRESETS))
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--packed", action=argparse.BooleanOptionalAction, default=True,
                    help="read the val split from its float16 pack (made with l2l-pack if missing), as the README "
                         "recommends; --no-packed reads the per-video .npy files")
    ap.add_argument("--repeats", type=int, default=2, help="runs of ours per row; the last one is reported")
    ap.add_argument("--layout", choices=layouts.LAYOUTS, default="auto",
                    help="feature layout of our evaluator (auto: chunk on CPU, dense on GPU/TPU)")
    ap.add_argument("--precisions", nargs="+", choices=numerics.PRECISIONS, default=list(numerics.PRECISIONS),
                    help="our precisions to time: rows without baselines for each, with baselines for the first")
    args = ap.parse_args(argv)
    data = Path(args.data) if args.data else ROOT / "runs" / f"bench_{args.preset}"
    if not (data / "val.pkl").exists():
        print(f"generating the synthetic {args.preset} set in {data} ...")
        generate(data, config=replace(PRESETS[args.preset], num_train=8), progress=False)
    num_classes = PRESETS[args.preset].num_classes
    loaded = weights.load(args.model, "two", "--model") if args.model else None
    if loaded is not None:
        num_classes = loaded.meta["num_classes"]
    def flags(precision: str):
        return program_flags.resolve("eval", [*README_EVAL, "--num_classes", str(num_classes), "--batch_size",
                                    str(args.batch_size), "--seed", str(args.seed), "--decode_threads", "2",
                                    "--feature_root", str(data), "--layout", args.layout, "--precision", precision])

    run_settings = config.settings(flags(args.precisions[0]), "eval")
    cfg = run_settings.model
    if loaded is not None:
        variables = loaded.variables
    else:
        variables = jax.tree.map(np.asarray, init_variables(cfg, "two", jax.random.key(args.seed)))
    if args.packed and not (data / "val.pack").exists():
        pack_pickle(data / "val.pkl", feature_root=data, num_classes=cfg.num_classes, float16=True)
    source = open_split(data / "val.pkl", packed=args.packed, **run_settings.data.split_options(progress=False))
    rows, roofs = [], {}
    ours = None
    runs = [(p, False) for p in args.precisions] + [(args.precisions[0], True)]
    for precision, with_baselines in runs:
        p_settings = config.settings(flags(precision), "eval")
        loader = p_settings.eval_loader(source)
        evaluator = Evaluator(build_model(p_settings.model, "two"), p_settings.model, "two",
                              with_baselines=with_baselines, seed=args.seed, layout=p_settings.layout)
        compile_s = 0.0
        for _ in range(args.repeats):  # the last run is reported (the first also reads the files into memory)
            res = evaluator.run(variables, loader, progress=False)
            compile_s += res.compile_seconds  # only the first run compiles
        res.compile_seconds = compile_s
        name = f"l2l-jax {precision} ({'with' if with_baselines else 'no'} baselines)"
        roofs[name] = roofline_rate(evaluator, variables, loader, precision)
        rows.append((name, res))
        ours = ours or res
    starts = dict(zip(ours.videos["index"].tolist(), ours.videos["start_idx"].tolist(), strict=True))
    t_metrics, t_seconds = torch_eval(variables, source, cfg, args.batch_size, starts)
    n = len(source)
    torch_vps = n / t_seconds
    lengths = np.asarray(source.lengths)
    print(f"\n{n} videos (synthetic '{args.preset}' val, T median {np.median(lengths):.0f}, max {lengths.max()}), "
          f"batch {args.batch_size}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
          f"torch {__import__('torch').get_num_threads()} threads")
    print(f"{'implementation':42s} {'videos/s':>9} {'vs torch':>9} {'compile s':>10} {'roofline videos/s':>18}")
    print(f"{'PyTorch reference (eager, preloaded)':42s} {torch_vps:9.1f} {1.0:9.2f} {'-':>10} {'-':>18}")
    for name, r in rows:
        roof = "-" if roofs[name] is None else f"{roofs[name]:.0f}"
        print(f"{name:42s} {r.videos_per_second:9.1f} {r.videos_per_second / torch_vps:9.2f} "
              f"{r.compile_seconds:10.1f} {roof:>18}")
    print("\nmetrics (same starts):  torch " + ", ".join(f"{k} {t_metrics[k]:.6f}" for k in
                                                      ("avgpool_acc", "lstm_acc", "avgpool_map", "lstm_map")))
    for name, r in rows:
        if "no baselines" in name:
            print(f"{name:>29}: " + ", ".join(f"{k} {r[k]:.6f}" for k in
                                              ("avgpool_acc", "lstm_acc", "avgpool_map", "lstm_map")))


if __name__ == "__main__":
    main()
