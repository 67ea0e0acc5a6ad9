"""Deviceless (ahead-of-time) compilation of the train and eval steps for TPUs and an NVIDIA H100, on a CPU machine.

    JAX_PLATFORMS=cpu python benchmarks/aot.py [--targets v5e:2x2 v6e:2x2 h100] [--batch_size 256]
        [--length 512] [--layouts dense chunk] [--precisions exact fast] [--json OUT]

Shows, without any accelerator, that the steps lower and compile through XLA's TPU and GPU pipelines, how much
memory a device needs, and how many kernels a step launches. Install, in a virtual environment of its own (the
accelerator compilers; keep them out of the development venv):

    python3.11 -m venv /work/venv-aot
    /work/venv-aot/bin/pip install "jax[tpu]==0.10.2"                         # jax + libtpu (~1.3 GB venv)
    /work/venv-aot/bin/pip install jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2   # XLA:GPU (~180 MB)
    /work/venv-aot/bin/pip install torch==2.13.0 && /work/venv-aot/bin/pip install -e .
    JAX_PLATFORMS=cpu /work/venv-aot/bin/python benchmarks/aot.py --json runs/aot.json

(the jax version must be the project's; the full ``jax[cuda12]`` extra, which adds the CUDA libraries, is not
needed to compile, only to run on a card.) The script sets ``JAX_PLATFORMS=cpu`` itself when it is unset, so
that nothing tries to open a device; libtpu's warnings about missing TPU host variables are harmless.

Targets: a TPU topology name as libtpu knows it (``v5e:2x2`` = 4 chips, ``v6e:2x2``, ``v5p:2x2x1``;
``v4:2x2x1`` gives 8 devices, one per TensorCore), ``h100`` (one H100 80GB described by
`benchmarks/h100.txtpb`, an XLA GpuTargetConfigProto), ``gpu:FILE.txtpb`` for another card, or ``cpu``
(this machine's backend, for a quick check of the script). The batch is split over all devices of the target.

What is compiled is what the programs build, from the published flags (`cli.resolve` -> `config.model_config`,
`config.recipe`): the train step (`steps.make_train_step` on a `TrainState`, state donated and replicated, as
`l2l-train` and `train_speed.py` jit it), the eval step (`steps.make_eval_step`, policy only, from the published
`l2l-eval` flags: interpolation, s = 1) and the evaluator's per-batch function with baselines and k-step curves
(`make_eval_fn`, what `l2l-eval` runs). Inputs are abstract (`jax.ShapeDtypeStruct` with `NamedSharding`s on a
mesh over the target's devices: batch arrays on ``P("data")``, state and variables replicated), so nothing is
allocated: ActivityNet-sized, C = 200 classes, bucket length Lb = --length, 512-wide image and audio features;
in the chunk layout a chunk index at the capacity a full batch of length-Lb rows needs
(`layouts.chunk.chunk_index(..., full=True)`: B/G * ceil(Lb/32) chunks per device group). Precisions: ``exact``,
and ``fast`` when `l2l_jax.cli.FLAGS` has ``precision``. Features come in the dtype the loader hands them over
in (`config.loader_options`: float32, or float16 in the fast precision).

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
import re
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

from l2l_jax import cli, config, parallel  # noqa: E402
from l2l_jax.layouts import chunk as chunk_layout  # noqa: E402
from l2l_jax.model import build_model, init_variables  # noqa: E402
from l2l_jax.steps import create_train_state, make_eval_step, make_train_step  # noqa: E402

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

DEFAULT_TARGETS = ["v5e:2x2", "v6e:2x2", "h100"]
STEPS = ("train", "eval", "eval+baselines")


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


# ----------------------------------------------------------------------------------------------------------
# Abstract inputs
# ----------------------------------------------------------------------------------------------------------
def abstract(tree: Any, sharding: NamedSharding) -> Any:
    """ShapeDtypeStructs of a pytree (of arrays or ShapeDtypeStructs) with one sharding."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def feature_dtype(cfg: Any) -> Any:
    """The dtype the programs' loader hands features to the step in (`config.loader_options`): float16 in the
    fast precision (held in bfloat16 on the device), else as stored (float32 .npy files)."""
    opts = config.loader_options(cfg)
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
    if "precision" in cli.FLAGS:
        argv += ["--precision", precision]
    return cli.resolve(program, argv)


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


def build_steps(mesh: Mesh, batch: int, length: int, layout: str, precision: str) -> dict[str, tuple]:
    """step name -> (jitted function, abstract arguments), built as the programs build them."""
    rep = parallel.replicated(mesh)
    steps = {}

    train_cfg = resolve("train", TRAIN_FLAGS, batch, layout, precision)
    data_batch = abstract_batch(mesh, batch, length, layout, feature_dtype(train_cfg))
    mcfg = config.model_config(train_cfg)
    recipe = config.recipe(train_cfg, math.ceil(TRAIN_VIDEOS / batch))
    model = build_model(mcfg, "two")
    state = jax.eval_shape(lambda: create_train_state(init_variables(mcfg, "two", jax.random.key(0)),
                                                      recipe.optimizer(), seed=0))
    train = jax.jit(make_train_step(model, recipe), donate_argnums=(0,), out_shardings=(rep, rep))
    steps["train"] = (train, (abstract(state, rep), data_batch))

    eval_cfg = resolve("eval", EVAL_FLAGS, batch, layout, precision)
    ecfg = config.model_config(eval_cfg)
    emodel = build_model(ecfg, "two")
    variables = abstract(jax.eval_shape(lambda: init_variables(ecfg, "two", jax.random.key(0))), rep)
    key = abstract(jax.eval_shape(lambda: jax.random.key(0)), rep)
    steps["eval"] = (jax.jit(make_eval_step(emodel)), (variables, data_batch, key))
    make_eval_fn = eval_fn_factory()
    if make_eval_fn is not None:
        fn = make_eval_fn(emodel, ecfg, "two", hard=False, with_baselines=True)
        steps["eval+baselines"] = (jax.jit(fn), (variables, data_batch, key))
    return steps


# ----------------------------------------------------------------------------------------------------------
# Reading a compiled executable
# ----------------------------------------------------------------------------------------------------------
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*)$")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def _opcode(rhs: str) -> str:
    """The opcode of an HLO instruction's right-hand side ``SHAPE opcode(operands), attrs``."""
    if rhs.startswith("("):  # a tuple shape: skip to its closing parenthesis
        depth, i = 0, 0
        while True:
            depth += (rhs[i] == "(") - (rhs[i] == ")")
            i += 1
            if depth == 0 or i == len(rhs):
                break
    else:
        i = rhs.find(" ")
    rest = rhs[i:].lstrip()
    return rest[: rest.find("(")] if "(" in rest else rest


def parse_hlo(text: str) -> tuple[str | None, dict[str, list[tuple[str, str]]]]:
    """(entry name, computation name -> [(opcode, instruction text)]) of an HLO module's text."""
    comps: dict[str, list[tuple[str, str]]] = {}
    entry, current = None, None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and "=" not in line.split("(")[0]:
                current = m.group(2)
                comps[current] = []
                if m.group(1):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            comps[current].append((_opcode(m.group(1)), line))
    return entry, comps


def _attr(line: str, name: str) -> list[str]:
    m = re.search(rf"\b{name}=\{{([^}}]*)\}}", line) or re.search(rf"\b{name}=%?([\w.\-]+)", line)
    return [s.strip().lstrip("%") for s in m.group(1).split(",")] if m else []


def _bound(cond: list[tuple[str, str]]) -> int | None:
    """The trip count a while condition ``i < N`` implies for a counter from 0 (as `lax.scan` lowers), where XLA
    does not annotate it (XLA:TPU): N when the condition is one compare LT against its one integer constant."""
    consts = [re.search(r"constant\((-?\d+)\)", line) for op, line in cond if op == "constant"]
    compares = [line for op, line in cond if op == "compare"]
    if len(consts) == 1 and consts[0] and len(compares) == 1 and "direction=LT" in compares[0]:
        return int(consts[0].group(1))
    return None


def launch_sites(text: str) -> dict[str, Any]:
    """Fusions and custom calls (kernel launch sites) of a compiled module: in the entry computation (with the
    computations it calls: command buffers, conditional branches, async wrappers), and per while loop (body
    plus condition, run once per iteration; nested loops counted in their own entry)."""
    entry, comps = parse_hlo(text)
    loops: list[dict[str, Any]] = []

    def count(name: str, seen: tuple = ()) -> dict[str, int]:
        c = {"fusion": 0, "custom-call": 0, "collective": 0}
        if name not in comps or name in seen:
            return c
        for op, line in comps[name]:
            if op in ("fusion", "custom-call"):
                c[op] += 1
            elif op.startswith(("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")):
                c["collective"] += not op.endswith("-done")
            if op == "while":
                body, cond = _attr(line, "body"), _attr(line, "condition")
                trip = _TRIP.search(line)
                trip = int(trip.group(1)) if trip else _bound(comps.get(cond[0], []) if cond else [])
                inner = {"fusion": 0, "custom-call": 0, "collective": 0}
                for sub in body + cond:
                    for k, v in count(sub, (*seen, name)).items():
                        inner[k] += v
                loops.append({"body": body[0] if body else "?", "trip_count": trip,
                              "launches": inner["fusion"] + inner["custom-call"], **inner})
            elif op in ("call", "conditional", "async-start") or op.endswith("-start") and "calls=" in line:
                subs = _attr(line, "to_apply") + _attr(line, "calls") + _attr(line, "branch_computations") + \
                    _attr(line, "true_computation") + _attr(line, "false_computation")
                for sub in subs:
                    for k, v in count(sub, (*seen, name)).items():
                        c[k] += v
        return c

    top = count(entry) if entry else {"fusion": 0, "custom-call": 0, "collective": 0}
    loops.reverse()  # outermost first (a nested loop is appended before the loop that holds it)
    return {"entry": top["fusion"] + top["custom-call"], **{f"entry_{k}": v for k, v in top.items()},
            "loops": loops}


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


def compile_one(fn: Any, args: tuple, options: dict) -> dict[str, Any]:
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
    return {"compiled": True, "compile_s": t2 - t0, "lower_s": t1 - t0, "memory": memory(exe), **cost(exe),
            "launches": launch_sites(exe.as_text())}


# ----------------------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------------------
COLUMNS = (("target", 16), ("layout", 6), ("prec", 5), ("step", 14), ("ok", 3), ("compile s", 9),
           ("MiB/device", 10), ("launches entry", 14), ("per while body (trips)", 24), ("GFLOP", 8),
           ("GB accessed", 11))


def fmt_row(r: dict[str, Any]) -> str:
    if not r["compiled"]:
        cells = [r["target"], r["layout"], r["precision"], r["step"], "no", f"{r['compile_s']:.1f}"]
        return "  ".join(f"{c:<{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=False)) + "  " + r["error"]
    cells = _cells(r, compile_fmt=".1f", number_fmt="", loop_fmt="{n}(x{trips})", loop_sep=" ")
    return "  ".join(f"{c:<{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True))


def _cells(r: dict[str, Any], *, compile_fmt: str, number_fmt: str, loop_fmt: str, loop_sep: str) -> list[str]:
    """The cells of a compiled row, for the plain table and the Markdown one (which groups thousands)."""
    mem = r["memory"]["total"]
    loops = loop_sep.join(loop_fmt.format(n=lp["launches"], trips=lp["trip_count"]) if lp["trip_count"]
                          else f"{lp['launches']}" for lp in r["launches"]["loops"]) or "-"
    return [r["target"], r["layout"], r["precision"], r["step"], "yes", f"{r['compile_s']:{compile_fmt}}",
            "-" if mem is None else f"{mem / 2**20:{number_fmt}.0f}", str(r["launches"]["entry"]), loops,
            "-" if r["flops"] is None else f"{r['flops'] / 1e9:{number_fmt}.1f}",
            "-" if r["bytes_accessed"] is None else f"{r['bytes_accessed'] / 1e9:.2f}"]


def header() -> str:
    return "  ".join(f"{n:<{w}}" for n, w in COLUMNS)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (failed rows carry their error in the last column)."""
    names = ["target", "layout", "precision", "step", "compiled", "compile s", "MiB/device", "launches: entry",
             "per while body (trips)", "GFLOP", "GB accessed"]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * 4 + ":-:|" + "---:|" * 6]
    for r in rows:
        if "layout" not in r:  # a target whose topology was refused
            lines.append(f"| {r['target']} | | | | no: {r['error']} |" + " |" * 6)
            continue
        if not r["compiled"]:
            lines.append(f"| {r['target']} | {r['layout']} | {r['precision']} | {r['step']} | no: {r['error']} | "
                         f"{r['compile_s']:.0f} |" + " |" * 5)
            continue
        cells = _cells(r, compile_fmt=".0f", number_fmt=",", loop_fmt="{n} (x{trips})", loop_sep=", ")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS,
                    help="TPU topologies (v5e:2x2, v6e:2x2, v4:2x2x1, ...), h100, gpu:FILE.txtpb or cpu")
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--length", type=int, default=512, help="bucket length Lb")
    ap.add_argument("--layouts", nargs="+", default=["dense", "chunk"], choices=["dense", "chunk"])
    ap.add_argument("--precisions", nargs="+", default=["exact", "fast"], choices=["exact", "fast"])
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--markdown", default=None, help="also write the rows as a Markdown table here")
    ap.add_argument("--from_json", nargs="+", default=None, metavar="JSON",
                    help="compile nothing: print (and --markdown) the rows of earlier --json files, in order")
    args = ap.parse_args(argv)
    if args.from_json:
        rows = [r for f in args.from_json for r in json.loads(Path(f).read_text())["rows"]]
        print(header())
        for r in rows:
            print(fmt_row(r) if "layout" in r else f"{r['target']}: {r['error']}")
        if args.markdown:
            Path(args.markdown).write_text(markdown(rows) + "\n")
        return rows
    if jax.default_backend() != "cpu":
        print(f"warning: jax's default backend is {jax.default_backend()}; run under JAX_PLATFORMS=cpu",
              file=sys.stderr)
    has_precision = "precision" in cli.FLAGS
    precisions = [p for p in args.precisions if p == "exact" or has_precision]
    if len(precisions) < len(args.precisions):
        print("note: l2l_jax.cli has no --precision flag in this checkout: compiling 'exact' only")
    if eval_fn_factory() is None and "eval+baselines" in args.steps:
        print("note: no make_eval_fn in this checkout: skipping eval+baselines")
    versions = {}
    for pkg in ("jax", "jaxlib", "libtpu", "jax-cuda12-plugin", "jax-cuda12-pjrt", "flax"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    print(f"batch {args.batch_size}, Lb {args.length}, C {C}, F {F}, published recipe; "
          f"layouts {args.layouts}, precisions {precisions}")
    rows: list[dict[str, Any]] = []
    for target in args.targets:
        try:
            devices, desc = target_devices(target)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            print(f"\n== {target}: no topology: {type(e).__name__}: {first}")
            rows.append({"target": target, "compiled": False, "error": f"topology: {first}"})
            continue
        mesh = Mesh(np.asarray(devices), (parallel.DATA,))
        print(f"\n== {target}: {desc}, batch {args.batch_size} = {len(devices)} x "
              f"{args.batch_size / len(devices):g} rows per device")
        print(header(), flush=True)
        options = parallel.compiler_options() if target == "cpu" else {}
        for layout in args.layouts:
            for precision in precisions:
                try:
                    steps = build_steps(mesh, args.batch_size, args.length, layout, precision)
                except Exception as e:
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    steps = {}
                    for step in args.steps:
                        r = {"target": target, "layout": layout, "precision": precision, "step": step,
                             "compiled": False, "compile_s": 0.0, "error": f"building: {type(e).__name__}: {first}"}
                        rows.append(r)
                        print(fmt_row(r), flush=True)
                for step in args.steps:
                    if step not in steps:
                        continue
                    fn, fargs = steps[step]
                    r = {"target": target, "devices": len(devices), "device_kind": desc, "layout": layout,
                         "precision": precision, "step": step, "batch_size": args.batch_size,
                         "length": args.length, **compile_one(fn, fargs, options)}
                    rows.append(r)
                    print(fmt_row(r), flush=True)
    if args.json:
        out = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "versions": versions, "rows": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"\nwrote {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows) + "\n")
    failed = [r for r in rows if not r["compiled"]]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} compiled")
    return rows


if __name__ == "__main__":
    main()
