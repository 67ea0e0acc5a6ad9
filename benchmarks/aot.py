"""Deviceless (ahead-of-time) compilation of the train and eval steps for TPUs and an NVIDIA H100, on a CPU machine.

    JAX_PLATFORMS=cpu python benchmarks/aot.py [--targets v5e:2x2 v6e:2x2 h100] [--batch_size 256]
        [--length 512] [--layouts dense chunk] [--precisions exact fast] [--json OUT]
        [--steps train eval eval+baselines predict distill video] [--video_model r2plus1d_18] [--video_batch 64]

Shows, without any accelerator, that the steps lower and compile through XLA's TPU and GPU pipelines, how much
memory a device needs, and how many kernels a step launches. Install, in a virtual environment of its own (the
accelerator compilers; keep them out of the development venv):

    python3.11 -m venv .venv-aot
    .venv-aot/bin/pip install "jax[tpu]==0.10.2"                         # jax + libtpu (~1.3 GB venv)
    .venv-aot/bin/pip install jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2   # XLA:GPU (~180 MB)
    .venv-aot/bin/pip install torch==2.13.0 && .venv-aot/bin/pip install -e .
    JAX_PLATFORMS=cpu .venv-aot/bin/python benchmarks/aot.py --json runs/aot.json

(the jax version must be the project's; the full ``jax[cuda12]`` extra, which adds the CUDA libraries, is not
needed to compile, only to run on a card.) The script sets ``JAX_PLATFORMS=cpu`` itself when it is unset, so
that nothing tries to open a device; libtpu's warnings about missing TPU host variables are harmless.

Targets: a TPU topology name as libtpu knows it (``v5e:2x2`` = 4 chips, ``v6e:2x2``, ``v5p:2x2x1``;
``v4:2x2x1`` gives 8 devices, one per TensorCore), ``h100`` (one H100 80GB described by
`benchmarks/h100.txtpb`, an XLA GpuTargetConfigProto), ``gpu:FILE.txtpb`` for another card, or ``cpu``
(this machine's backend, for a quick check of the script). The batch is split over all devices of the target.

What is compiled is what the programs build, from the published flags (`flags.resolve` -> `config.settings`: its model
config and recipe): the train step (`steps.make_train_step` on a `TrainState`, state donated and replicated, as
`l2l-train` and `train_speed.py` jit it), the eval step (`steps.make_eval_step`, policy only, from the published
`l2l-eval` flags: interpolation, s = 1) and the evaluator's per-batch function with baselines and k-step curves
(`make_eval_fn`, what `l2l-eval` runs), the policy step of ``l2l-predict`` (`make_eval_fn` without baselines, as
`l2l_jax.prediction.policy.Policy` builds the evaluator, on a model trained with README's recipe:
``--mean_feature_as_start --with_replacement``, E = 10, no interpolation), l2l-distill's train step (--distill_batch
clips) and the video model's forward of ``l2l-extract --video_model`` (--video_model on --video_batch clips of 16 x
112 x 112, Kinetics normalisation inside, features and logits out, as `l2l_jax.video.video_clips.VideoExtractor` jits
it; the two clip steps have no layout and compile once per precision). Inputs are abstract (`jax.ShapeDtypeStruct` with
`NamedSharding`s on a mesh over the target's devices: batch arrays on ``P("data")``, state and variables
replicated), so nothing is allocated: ActivityNet-sized, C = 200 classes, bucket length Lb = --length, 512-wide
image and audio features; in the chunk layout a chunk index at the capacity a full batch of length-Lb rows needs
(`layouts.chunk.chunk_index(..., full=True)`: B/G * ceil(Lb/32) chunks per device group). Precisions: ``exact``,
and ``fast`` when `l2l_jax.programs.flags.FLAGS` has ``precision``. Features come in the dtype the loader hands
them over in (`config.Settings.loader`: float32, or float16 in the fast precision).

Per target x layout x precision x step one row: compiled or not (the error's first line), compile seconds
(lowering + compilation), memory per device from `memory_analysis()` (arguments + outputs + temporaries, less
the outputs that alias donated arguments), kernel launch sites counted in the compiled HLO (`as_text()`):
fusions and custom calls in the entry computation, and in each while body (run once per iteration; its trip
count in parentheses: XLA's annotation on GPU and CPU, the bound of the loop condition on TPU), and XLA's
cost figures where the backend gives them (flops and bytes accessed per device; XLA:GPU gives none).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_cost  # noqa: E402

from l2l_jax import config, parallel  # noqa: E402
from l2l_jax.layouts import chunk as chunk_layout  # noqa: E402
from l2l_jax.model import build_model, init_variables  # noqa: E402
from l2l_jax.programs import flags as program_flags  # noqa: E402
from l2l_jax.steps import create_train_state, make_eval_step, make_train_step  # noqa: E402
from l2l_jax.video.video_networks import ARCHS as VIDEO_ARCHS  # noqa: E402

HERE = Path(__file__).resolve().parent
C, F = 200, 512
#: ActivityNet v1.3's training split (10,024 videos) at the published batch: only the schedule's constants
#: depend on it, never a shape
TRAIN_VIDEOS = 10024

#: upstream's published training command (docs/UPSTREAM.md §1), the flags that shape a step
TRAIN_FLAGS = ["--num_classes", str(C), "--lr", "0.01", "--milestones", "15", "20", "--momentum", "0.9",
               "--scheduler", "--warmup_epochs", "0", "--freeze_imageAudioNet", "--with_avgpool_ce_loss",
               "--mean_feature_as_start", "--with_replacement", "--episode_length", "10"]
#: upstream's published evaluation command, the flags that shape a step
EVAL_FLAGS = ["--num_classes", str(C), "--scheduler", "--episode_length", "10", "--with_replacement",
              "--mean_feature_as_start", "--feature_interpolate", "--subsample_factor", "1"]
#: the model l2l-predict runs, as README's training command makes it (the flags that shape its policy step)
PREDICT_FLAGS = ["--num_classes", str(C), "--episode_length", "10", "--with_replacement", "--mean_feature_as_start"]

DEFAULT_TARGETS = ["v5e:2x2", "v6e:2x2", "h100"]
STEPS = ("train", "eval", "eval+baselines", "predict", "distill", "video")
#: steps without a feature layout: compiled once per precision (with the first layout), on clips
CLIP_STEPS = ("distill", "video")


# ----------------------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------------------
def target_devices(target: str) -> tuple[list, str]:
    """(compile-only devices, description) of a target name."""
    from jax.experimental import topologies

    if target == "cpu":
        return list(jax.devices("cpu")), f"{jax.devices('cpu')[0].device_kind} (this machine)"
    if target == "h100" or target.startswith("gpu:"):
        path = HERE / "h100.txtpb" if target == "h100" else Path(target[4:])
        topo = topologies.get_topology_desc(platform="cuda", topology_name="", target_config=path.read_text(),
                                            topology="1x1x1")
    else:
        topo = topologies.get_topology_desc(topology_name=target, platform="tpu")
    devices = list(topo.devices)
    return devices, f"{len(devices)} x {devices[0].device_kind}"


def target_backend(target: str) -> str:
    """The jax backend a target compiles for ("cpu", "gpu" or "tpu"): the numerics adapt to it."""
    if target == "cpu":
        return "cpu"
    return "gpu" if target == "h100" or target.startswith("gpu:") else "tpu"


# ----------------------------------------------------------------------------------------------------------
# Abstract inputs
# ----------------------------------------------------------------------------------------------------------
def abstract(tree: Any, sharding: NamedSharding) -> Any:
    """ShapeDtypeStructs of a pytree (of arrays or ShapeDtypeStructs) with one sharding."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def feature_dtype(cfg: Any) -> Any:
    """The dtype the programs' loader hands features to the step in (`config.Settings.loader`): float16 in the
    fast precision (held in bfloat16 on the device), else as stored (float32 .npy files)."""
    opts = config.settings(cfg, "train").loader
    return jnp.dtype(getattr(opts, "feature_dtype", None) or jnp.float32)


def abstract_batch(mesh: Mesh, batch: int, length: int, layout: str, dtype: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """A batch as the loader hands it to `parallel.shard_batch`: dense (B, Lb, F) features, or the chunk layout
    (G, S, F) with its (G, C) index at the capacity of a full batch (every row Lb long, `full=True`)."""
    data, rep = parallel.data_sharding(mesh), parallel.replicated(mesh)
    groups = mesh.devices.size

    def arr(shape, dt, sharding=data):
        return jax.ShapeDtypeStruct(shape, dt, sharding=sharding)

    out = {"mask": arr((batch, length), jnp.float32), "label": arr((batch,), jnp.int32),
           "valid": arr((batch,), jnp.float32), "index": arr((batch,), jnp.int32),
           "length": arr((), jnp.int32, rep)}
    if layout == "chunk":
        chunks = chunk_layout.chunk_index(np.ones((batch, length), np.float32), np.ones(batch, np.float32), groups,
                                          full=True)
        out["chunks"] = arr(chunks.shape, jnp.int32)
        feat = (groups, chunks.shape[1] * chunk_layout.CHUNK, F)
    else:
        feat = (batch, length, F)
    out["image"] = arr(feat, dtype)
    out["audio"] = arr(feat, dtype)
    return out


def resolve(program: str, flags: list[str], batch: int, layout: str, precision: str):
    argv = [*flags, "--batch_size", str(batch), "--layout", layout]
    if "precision" in program_flags.FLAGS:
        argv += ["--precision", precision]
    return program_flags.resolve(program, argv)


def eval_fn_factory():
    """The evaluator's per-batch function with baselines (`make_eval_fn`), wherever this checkout has it."""
    try:
        from l2l_jax.evaluation.evaluator import make_eval_fn
    except ImportError:
        try:
            from l2l_jax.evaluate import make_eval_fn
        except ImportError:
            return None
    return make_eval_fn


def video_forward(mesh: Mesh, arch: str, batch: int, precision: str) -> tuple[Any, tuple]:
    """(jitted forward, (abstract variables, abstract clips)) of ``l2l-extract --video_model arch``: the function
    `video_clips.VideoExtractor` jits (normalise, the network, features and logits, both on ``P("data")``),
    variables replicated, clips (batch, 16, 112, 112, 3) float32 on ``P("data")``."""
    from l2l_jax import numerics
    from l2l_jax.video import video_clips as VCL
    from l2l_jax.video import video_networks as V

    cfg = VCL.DEFAULT
    net = V.video_resnet(arch, V.NUM_CLASSES, numerics.get(precision))
    rep, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    forward = VCL.video_forward(arch, V.NUM_CLASSES, precision, cfg)
    variables = abstract(jax.eval_shape(lambda: V.init_variables(net)), rep)
    clips = jax.ShapeDtypeStruct((batch, cfg.frames, cfg.crop, cfg.crop, 3), jnp.float32, sharding=data)
    return jax.jit(forward, out_shardings=(data, data)), (variables, clips)


def build_steps(mesh: Mesh, batch: int, length: int, layout: str, precision: str,
                distill_batch: int | None = None, backend: str = "cpu",
                video: tuple[str, int] | None = None) -> dict[str, tuple]:
    """step name -> (jitted function, abstract arguments), built as the programs build them; with
    `distill_batch`, also l2l-distill's train step on that many clips, and with `video` (arch, clips) the video
    model's forward (neither has a feature layout)."""
    rep = parallel.replicated(mesh)
    steps = {}

    train_cfg = resolve("train", TRAIN_FLAGS, batch, layout, precision)
    data_batch = abstract_batch(mesh, batch, length, layout, feature_dtype(train_cfg))
    train_settings = config.settings(train_cfg, "train", backend)
    mcfg = train_settings.model
    recipe = train_settings.recipe.build(math.ceil(TRAIN_VIDEOS / batch))
    model = build_model(mcfg, "two")
    state = jax.eval_shape(lambda: create_train_state(init_variables(mcfg, "two", jax.random.key(0)),
                                                      recipe.optimizer(), seed=0))
    train = jax.jit(make_train_step(model, recipe), donate_argnums=(0,), out_shardings=(rep, rep))
    steps["train"] = (train, (abstract(state, rep), data_batch))

    eval_cfg = resolve("eval", EVAL_FLAGS, batch, layout, precision)
    ecfg = config.settings(eval_cfg, "eval", backend).model
    emodel = build_model(ecfg, "two")
    variables = abstract(jax.eval_shape(lambda: init_variables(ecfg, "two", jax.random.key(0))), rep)
    key = abstract(jax.eval_shape(lambda: jax.random.key(0)), rep)
    steps["eval"] = (jax.jit(make_eval_step(emodel)), (variables, data_batch, key))
    make_eval_fn = eval_fn_factory()
    if make_eval_fn is not None:
        fn = make_eval_fn(emodel, ecfg, "two", hard=False, with_baselines=True)
        steps["eval+baselines"] = (jax.jit(fn), (variables, data_batch, key))
        pcfg = config.settings(resolve("eval", PREDICT_FLAGS, batch, layout, precision), "eval", backend).model
        pfn = make_eval_fn(build_model(pcfg, "two"), pcfg, "two", hard=False, with_baselines=False)
        pvars = abstract(jax.eval_shape(lambda: init_variables(pcfg, "two", jax.random.key(0))), rep)
        steps["predict"] = (jax.jit(pfn), (pvars, data_batch, key))
    if distill_batch:
        from l2l_jax import numerics
        from l2l_jax.video.distill_step import abstract_train_step

        steps["distill"] = abstract_train_step(mesh, distill_batch, numerics.get(precision))
    if video:
        steps["video"] = video_forward(mesh, video[0], video[1], precision)
    return steps


# ----------------------------------------------------------------------------------------------------------
# Reading a compiled executable
# ----------------------------------------------------------------------------------------------------------
def cost(exe: Any) -> dict[str, float | None]:
    try:
        ca = exe.cost_analysis()
    except Exception:
        ca = None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca:
        return {"flops": None, "bytes_accessed": None}
    return {"flops": ca.get("flops"), "bytes_accessed": ca.get("bytes accessed")}


def memory(exe: Any) -> dict[str, int | None]:
    try:
        m = exe.memory_analysis()
    except Exception:
        m = None
    if m is None:
        return {"argument": None, "output": None, "alias": None, "temp": None, "total": None}
    out = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
           "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes}
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def compile_one(fn: Any, args: tuple, options: dict, *, target: str, precision: str, devices: int,
                batch: int) -> dict[str, Any]:
    """Compiles one step; its memory, XLA's cost figures, the per-step counts (`step_cost`: launches,
    collectives and kernel bytes per chip, loops times their trips; FLOPs from the jaxpr) and the roofline."""
    t0 = time.perf_counter()
    try:
        lowered = fn.lower(*args)
        t1 = time.perf_counter()
        exe = lowered.compile(compiler_options=options or None)
    except Exception as e:  # report the first line, keep going
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return {"compiled": False, "error": f"{type(e).__name__}: {first}"[:300],
                "traceback": traceback.format_exc(limit=3), "compile_s": time.perf_counter() - t0}
    t2 = time.perf_counter()
    counts = step_cost.hlo_step_counts(exe.as_text())
    flops = step_cost.step_flops(fn, args) / devices
    roof = step_cost.roofline(step_cost.chip_of(target), precision, flops, counts["step_bytes"], batch)
    return {"compiled": True, "compile_s": t2 - t0, "lower_s": t1 - t0, "memory": memory(exe), **cost(exe),
            "launches": counts, "step_flops": flops, "roofline": roof}


# ----------------------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------------------
COLUMNS = (("target", 10), ("layout", 6), ("prec", 5), ("step", 14), ("ok", 3), ("compile s", 9),
           ("MiB/chip", 8), ("launches/step", 13), ("collectives/step", 16), ("GFLOP/chip", 10),
           ("GB/chip", 8), ("all GB", 7), ("XLA GB", 7), ("roofline videos/s", 17))


def _cells(r: dict[str, Any], *, compile_fmt: str, number_fmt: str) -> list[str]:
    """The cells of a compiled row, for the plain table and the Markdown one (which groups thousands)."""
    mem, lc, roof = r["memory"]["total"], r["launches"], r.get("roofline") or {}
    vps = roof.get("videos_per_s")
    return [r["target"], r["layout"], r["precision"], step_label(r), "yes", f"{r['compile_s']:{compile_fmt}}",
            "-" if mem is None else f"{mem / 2**20:{number_fmt}.0f}", f"{lc['step_launches']:{number_fmt}.0f}",
            f"{lc['step_collectives']:{number_fmt}.0f}", f"{r['step_flops'] / 1e9:{number_fmt}.1f}",
            f"{lc['step_bytes'] / 1e9:.2f}", f"{lc['step_bytes_all'] / 1e9:.2f}",
            "-" if r["bytes_accessed"] is None else f"{r['bytes_accessed'] / 1e9:.2f}",
            "-" if vps is None else f"{vps:{number_fmt}.0f} ({roof['bound']})"]


def step_label(r: dict[str, Any]) -> str:
    """The step column: the step's name, and the network of a video row."""
    return f"{r['step']} {r['video_model']}" if r.get("video_model") else r["step"]


def fmt_row(r: dict[str, Any]) -> str:
    if not r["compiled"]:
        cells = [r["target"], r["layout"], r["precision"], step_label(r), "no", f"{r['compile_s']:.1f}"]
        return "  ".join(f"{c:<{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=False)) + "  " + r["error"]
    cells = _cells(r, compile_fmt=".1f", number_fmt="")
    return "  ".join(f"{c:<{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True))


def header() -> str:
    return "  ".join(f"{n:<{w}}" for n, w in COLUMNS)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (failed rows carry their error in the fifth column)."""
    names = [n for n, _ in COLUMNS]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * 4 + ":-:|" + "---:|" * (len(names) - 5)]
    for r in rows:
        if "layout" not in r:  # a target whose topology was refused
            lines.append(f"| {r['target']} | | | | no: {r['error']} |" + " |" * (len(names) - 5))
            continue
        if not r["compiled"]:
            lines.append(f"| {r['target']} | {r['layout']} | {r['precision']} | {step_label(r)} | no: {r['error']} | "
                         f"{r['compile_s']:.0f} |" + " |" * (len(names) - 6))
            continue
        lines.append("| " + " | ".join(_cells(r, compile_fmt=".0f", number_fmt=",")) + " |")
    return "\n".join(lines)


def peaks_table() -> str:
    """The chips' published peaks the roofline uses (`step_cost.PEAKS`)."""
    rows = [f"  {k}: bf16 {v['bf16'] / 1e12:.0f} TFLOP/s, f32 as exact computes {v['f32'] / 1e12:.1f} TFLOP/s, "
            f"{v['hbm'] / 1e9:.0f} GB/s ({v['source']})" for k, v in step_cost.PEAKS.items()]
    return "roofline peaks per chip:\n" + "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS,
                    help="TPU topologies (v5e:2x2, v6e:2x2, v4:2x2x1, ...), h100, gpu:FILE.txtpb or cpu")
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--length", type=int, default=512, help="bucket length Lb")
    ap.add_argument("--layouts", nargs="+", default=["dense", "chunk"], choices=["dense", "chunk"])
    ap.add_argument("--precisions", nargs="+", default=["exact", "fast"], choices=["exact", "fast"])
    ap.add_argument("--steps", nargs="+", default=[s for s in STEPS if s != "video"], choices=STEPS,
                    help="default: all but video (its exact forward takes XLA:TPU about 7 minutes to compile here)")
    ap.add_argument("--distill_batch", type=int, default=256,
                    help="clips per l2l-distill train step (the distill row's batch; its roofline counts clips/s)")
    ap.add_argument("--video_model", default="r2plus1d_18", choices=tuple(VIDEO_ARCHS),
                    help="the video row's network (l2l-extract --video_model)")
    ap.add_argument("--video_batch", type=int, default=64,
                    help="clips per video forward (the video row's batch, l2l-extract's default --batch_size; "
                         "its roofline counts clips/s)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--markdown", default=None, help="also write the rows as a Markdown table here")
    ap.add_argument("--from_json", nargs="+", default=None, metavar="JSON",
                    help="compile nothing: print (and --markdown) the rows of earlier --json files, in order")
    return ap.parse_args(argv)


def print_saved(paths: list[str], markdown_path: str | None) -> list[dict[str, Any]]:
    """--from_json: the rows of earlier --json files, printed (and written as Markdown), in order."""
    rows = [r for f in paths for r in json.loads(Path(f).read_text())["rows"]]
    print(header())
    for r in rows:
        print(fmt_row(r) if "layout" in r else f"{r['target']}: {r['error']}")
    if markdown_path:
        Path(markdown_path).write_text(markdown(rows) + "\n")
    return rows


def package_versions() -> dict[str, str | None]:
    """The installed versions of jax, its accelerator compilers and flax (None: not installed)."""
    versions = {}
    for pkg in ("jax", "jaxlib", "libtpu", "jax-cuda12-plugin", "jax-cuda12-pjrt", "flax"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


def usable_precisions(args: argparse.Namespace) -> list[str]:
    """The precisions this checkout can compile (warning about what it skips)."""
    if jax.default_backend() != "cpu":
        print(f"warning: jax's default backend is {jax.default_backend()}; run under JAX_PLATFORMS=cpu",
              file=sys.stderr)
    has_precision = "precision" in program_flags.FLAGS
    precisions = [p for p in args.precisions if p == "exact" or has_precision]
    if len(precisions) < len(args.precisions):
        print("note: l2l_jax.programs.flags has no --precision flag in this checkout: compiling 'exact' only")
    if eval_fn_factory() is None and "eval+baselines" in args.steps:
        print("note: no make_eval_fn in this checkout: skipping eval+baselines")
    return precisions


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def compile_target(target: str, args: argparse.Namespace, precisions: list[str]) -> list[dict[str, Any]]:
    """The rows of one target: every layout x precision x step, printed as they come."""
    try:
        devices, desc = target_devices(target)
    except Exception as e:
        print(f"\n== {target}: no topology: {type(e).__name__}: {first_line(e)}")
        return [{"target": target, "compiled": False, "error": f"topology: {first_line(e)}"}]
    mesh = Mesh(np.asarray(devices), (parallel.DATA,))
    print(f"\n== {target}: {desc}, batch {args.batch_size} = {len(devices)} x "
          f"{args.batch_size / len(devices):g} rows per device"
          + "".join(f"; {step} rows: {n} clips" for step, n in (("distill", args.distill_batch),
                                                                 ("video", args.video_batch)) if step in args.steps))
    print(header(), flush=True)
    options = parallel.compiler_options() if target == "cpu" else {}
    rows: list[dict[str, Any]] = []
    for layout in args.layouts:
        for precision in precisions:
            try:
                first_layout = layout == args.layouts[0]
                steps = build_steps(mesh, args.batch_size, args.length, layout, precision,
                                    args.distill_batch if first_layout and "distill" in args.steps else None,
                                    backend=target_backend(target),
                                    video=((args.video_model, args.video_batch)
                                           if first_layout and "video" in args.steps else None))
            except Exception as e:
                steps = {}
                for step in args.steps:
                    r = {"target": target, "layout": layout, "precision": precision, "step": step,
                         "compiled": False, "compile_s": 0.0,
                         "error": f"building: {type(e).__name__}: {first_line(e)}"}
                    rows.append(r)
                    print(fmt_row(r), flush=True)
            for step in args.steps:
                if step not in steps:
                    continue
                fn, fargs = steps[step]
                clip_step = step in CLIP_STEPS  # clips (frames, log-mels; video clips), no layout
                n = {"distill": args.distill_batch, "video": args.video_batch}.get(step, args.batch_size)
                r = {"target": target, "devices": len(devices), "device_kind": desc,
                     "layout": "-" if clip_step else layout, "precision": precision, "step": step,
                     "batch_size": n, "length": None if clip_step else args.length,
                     **({"video_model": args.video_model} if step == "video" else {}),
                     **compile_one(fn, fargs, options, target=target, precision=precision,
                                   devices=len(devices), batch=n)}
                rows.append(r)
                print(fmt_row(r), flush=True)
    return rows


def write_outputs(args: argparse.Namespace, argv: list[str] | None, versions: dict[str, str | None],
                  rows: list[dict[str, Any]]) -> None:
    """--json (the rows with the command, date and versions) and --markdown."""
    if args.json:
        out = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "versions": versions, "rows": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"\nwrote {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows) + "\n")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.from_json:
        return print_saved(args.from_json, args.markdown)
    precisions = usable_precisions(args)
    versions = package_versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    print(f"batch {args.batch_size}, Lb {args.length}, C {C}, F {F}, published recipe; "
          f"layouts {args.layouts}, precisions {precisions}")
    print(peaks_table())
    rows: list[dict[str, Any]] = []
    for target in args.targets:
        rows += compile_target(target, args, precisions)
    write_outputs(args, argv, versions, rows)
    failed = [r for r in rows if not r["compiled"]]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} compiled")
    return rows

if __name__ == "__main__":
    main()
