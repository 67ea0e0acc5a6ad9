"""Training speed: `l2l-train`'s jitted step vs a straightforward eager PyTorch loop, same model, data and batch.

    python benchmarks/train_speed.py [--batch_size 32] [--steps 6] [--num_videos 512] [--buckets 256 384 512]
        [--layout auto|dense|chunk] [--precisions exact fast]

Data: ActivityNet-sized synthetic videos in memory (T ~ LogNormal(median 120, sigma 0.5) clipped to [10, 700]
clips, 512-wide image and audio features, 200 classes). Batches: our seeded collate (`collate.plan_seeded`:
upstream's L ~ U{200..500} window capped at the longest video, crops and fills); PyTorch gets each batch at its
exact length L, ours the same batch padded to its length bucket. Recipe: the published one (frozen fusion net,
avgpool loss, mean-feature start, no repeated clips, E = 10, Nesterov SGD with upstream's groups), built by
`l2l_jax.config` from the published flags as `l2l-train` builds it.

Ours: `steps.make_train_step` under `jax.jit` with the state donated, batches put on the device mesh as
`l2l-train` does, no host sync until the end; compilation (one per bucket met) timed separately. PyTorch:
`tests/torch_reference.py` `train_step` (upstream's style: Python loop over the E steps, `loss.item()` each
iteration), default thread count. Prints a table: videos/s for each of our precisions (exact: float32 as
upstream; fast: bfloat16 products, 16-bit features) and for PyTorch, the ratios, compile seconds, and on a GPU
or TPU whose peaks `step_cost.PEAKS` knows, the roofline bound of our steps (`step_cost.estimate`) beside the
measured rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import step_cost  # noqa: E402

from l2l_jax import config, layouts, numerics, parallel  # noqa: E402
from l2l_jax.data.buckets import bucket_length  # noqa: E402
from l2l_jax.data.collate import mask_for, plan_seeded  # noqa: E402
from l2l_jax.model import PreviewConfig, build_model, init_variables  # noqa: E402
from l2l_jax.programs import flags as program_flags  # noqa: E402
from l2l_jax.steps import create_train_state, make_train_step  # noqa: E402

C, F = 200, 512


def make_videos(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(120), 0.5, n)), 10, 700).astype(int)
    image = [np.maximum(rng.standard_normal((t, F), np.float32), 0) for t in lengths]
    audio = [np.maximum(rng.standard_normal((t, F), np.float32), 0) for t in lengths]
    return image, audio, rng.integers(0, C, n)


def make_batches(image, audio, labels, batch_size: int, steps: int, buckets, seed: int) -> list[tuple[dict, dict]]:
    """(ours: bucket-padded dict, torch: exact-L dict) per step, from one seeded plan per batch."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    out = []
    for _ in range(steps):
        members = rng.choice(n, batch_size, replace=False)
        lengths = np.array([len(image[i]) for i in members])
        plan = plan_seeded(lengths, train=True, random_fill=False, rng=rng)
        L = plan.L
        xi = np.zeros((batch_size, L, F), np.float32)
        xa = np.zeros((batch_size, L, F), np.float32)
        for r, i in enumerate(members):
            s, t = int(plan.starts[r]), min(int(lengths[r]), L)
            xi[r, :t], xa[r, :t] = image[i][s:s + t], audio[i][s:s + t]
            for p in range(int(lengths[r]), 10):
                xi[r, p], xa[r, p] = xi[r, plan.fill_src[r, p]], xa[r, plan.fill_src[r, p]]
        y = labels[members].astype(np.int32)
        exact = {"image": xi, "audio": xa, "mask": mask_for(lengths, L, L, 10), "label": y}
        Lb = bucket_length(L, buckets)
        pad = ((0, 0), (0, Lb - L), (0, 0))
        ours = {"image": np.pad(xi, pad), "audio": np.pad(xa, pad), "mask": mask_for(lengths, L, Lb, 10),
                "label": y, "valid": np.ones(batch_size, np.float32), "length": np.asarray(L, np.int32),
                "index": members.astype(np.int32)}
        out.append((ours, exact))
    return out


#: upstream's published training command (docs/UPSTREAM.md §1), the flags that shape a step
PUBLISHED = ["--num_classes", str(C), "--lr", "0.01", "--milestones", "15", "20", "--momentum", "0.9", "--scheduler",
             "--warmup_epochs", "0", "--freeze_imageAudioNet", "--with_avgpool_ce_loss", "--mean_feature_as_start",
             "--with_replacement", "--episode_length", "10"]


def half(batch: dict) -> dict:
    """The batch with its features in 16 bits, as the loader streams them in fast precision."""
    return {k: v.astype(np.float16) if k in ("image", "audio") else v for k, v in batch.items()}


def run_ours(batches, run_cfg, variables) -> dict:
    mesh = parallel.make_mesh()
    settings = config.settings(run_cfg, "train")
    rec = settings.recipe.build(len(batches))
    model = build_model(settings.model, "two")
    layout = settings.layout
    state = parallel.replicate(create_train_state(variables, rec.optimizer(), seed=0), mesh)
    rep = parallel.replicated(mesh)
    step = jax.jit(make_train_step(model, rec), donate_argnums=(0,), out_shardings=(rep, rep),
                   compiler_options=parallel.compiler_options())
    dev = [parallel.shard_batch(b, mesh, layout) for b, _ in batches]
    compiled, compile_s = {}, 0.0

    def signature(d):
        return tuple((k, v.shape) for k, v in sorted(d.items()))

    roof: dict = {}
    for d in dev:
        sig = signature(d)
        if sig not in compiled:
            t0 = time.perf_counter()
            compiled[sig] = step.lower(state, d).compile()
            compile_s += time.perf_counter() - t0
            roof[sig] = step_cost.estimate(step, (state, d), compiled[sig], run_cfg["precision"], len(d["label"]))
    # one untimed step per executable (first-run allocation), then the timed loop
    for sig, exe in compiled.items():
        d = next(x for x in dev if signature(x) == sig)
        state, m = exe(state, d)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    losses = []
    for b, _ in batches:
        d = parallel.shard_batch(b, mesh, layout)
        state, m = compiled[signature(d)](state, d)
        losses.append(m["loss"])
    jax.block_until_ready(state)
    secs = time.perf_counter() - t0
    n = sum(len(b["label"]) for b, _ in batches)
    bound_s = [roof[signature(d)]["step_s"] for d in dev]
    roofline = None if None in bound_s else n / sum(bound_s)
    return {"videos_per_s": n / secs, "seconds": secs, "compile_s": compile_s, "executables": len(compiled),
            "loss": float(np.mean([float(x) for x in losses])), "layout": layout, "roofline_videos_per_s": roofline}


def run_torch(batches, cfg: PreviewConfig, variables) -> dict:
    import torch
    import torch_reference as tr

    from l2l_jax import torch_names

    model = tr.from_state_dict(torch_names.to_state_dict(variables, "two"), "two",
                               mean_feature_as_start=cfg.mean_feature_as_start,
                               with_replacement=cfg.with_replacement)
    opt = tr.make_optimizer(model, "two", lr=0.01, freeze=True)
    sched = tr.make_scheduler(opt, milestones=(15 * len(batches), 20 * len(batches)))
    tensors = [(torch.from_numpy(e["image"]), torch.from_numpy(e["audio"]), torch.from_numpy(e["mask"]),
                torch.from_numpy(e["label"].astype(np.int64)), np.arange(len(e["label"]))) for _, e in batches]
    tr.train_step(model, opt, tensors[0], cfg.episode_length, scheduler=sched)  # warm-up
    t0 = time.perf_counter()
    losses = [tr.train_step(model, opt, b, cfg.episode_length, scheduler=sched)["loss"] for b in tensors]
    secs = time.perf_counter() - t0
    n = sum(len(e["label"]) for _, e in batches)
    return {"videos_per_s": n / secs, "seconds": secs, "loss": float(np.mean(losses)),
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--num_videos", type=int, default=512)
    ap.add_argument("--buckets", type=int, nargs="+", default=[256, 384, 512])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip_torch", action="store_true", help="only time ours (e.g. on a GPU machine)")
    ap.add_argument("--layout", choices=layouts.LAYOUTS, default="auto",
                    help="feature layout of our step (auto: chunk on CPU, dense on GPU/TPU)")
    ap.add_argument("--precisions", nargs="+", choices=numerics.PRECISIONS, default=list(numerics.PRECISIONS),
                    help="our precisions to time, each a row")
    args = ap.parse_args(argv)
    image, audio, labels = make_videos(args.num_videos, args.seed)
    batches = make_batches(image, audio, labels, args.batch_size, args.steps, args.buckets, args.seed + 1)
    rows = []
    for precision in args.precisions:
        run_cfg = program_flags.resolve("train", [*PUBLISHED, "--batch_size", str(args.batch_size),
                                                  "--layout", args.layout, "--seed", str(args.seed),
                                                  "--precision", precision])
        cfg = config.settings(run_cfg, "train").model
        variables = jax.tree_util.tree_map(np.asarray, init_variables(cfg, "two", jax.random.key(args.seed)))
        feed = batches if precision == numerics.EXACT.name else [(half(b), e) for b, e in batches]
        rows.append((f"l2l-jax {precision}", run_ours(feed, run_cfg, variables)))
    ours = rows[0][1]
    mean_L = np.mean([int(b["length"]) for b, _ in batches])
    mean_Lb = np.mean([b["image"].shape[1] for b, _ in batches])
    dev = jax.devices()[0]
    print(f"device: {jax.device_count()} x {dev.platform} ({dev.device_kind}); batch {args.batch_size}, "
          f"{args.steps} steps, mean L {mean_L:.0f} (padded to {mean_Lb:.0f}), layout {ours['layout']}")
    if not args.skip_torch:
        rows.append(("PyTorch eager", run_torch(batches, config.settings(run_cfg, "train").model, variables)))
    print(f"{'implementation':<16} {'videos/s':>10} {'s/step':>8} {'compile s':>10} {'mean loss':>10} "
          f"{'roofline videos/s':>18}")
    for name, r in rows:
        comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        roof = r.get("roofline_videos_per_s")
        print(f"{name:<16} {r['videos_per_s']:>10.1f} {r['seconds'] / args.steps:>8.3f} {comp:>10} "
              f"{r['loss']:>10.4f} {'-' if roof is None else f'{roof:.0f}':>18}")
    result = {"ours": ours, "batch_size": args.batch_size, "steps": args.steps,
              "rows": {name: r for name, r in rows}}
    if not args.skip_torch:
        torch_rate = rows[-1][1]["videos_per_s"]
        result["torch"] = rows[-1][1]
        result["ratio"] = ours["videos_per_s"] / torch_rate
        for name, r in rows[:-1]:
            print(f"speed-up ({name} / torch): {r['videos_per_s'] / torch_rate:.2f}x")
    return result


if __name__ == "__main__":
    main()
