"""Per-step cost of a compiled step, loops counted as they run: FLOPs from the jaxpr, kernel launches,
collectives and kernel memory traffic from the compiled HLO, and a roofline estimate from a chip's published
peaks.

XLA's own `cost_analysis()` counts a while loop's body once, whatever its trip count, and XLA:GPU gives none
at all; the policy's episode is a scan of E steps (forward and backward), so both would undercount a training
step several-fold. Here:

- **FLOPs** (`jaxpr_flops`): 2 x M x N x K of every ``dot_general`` and convolution in the traced program,
  scan bodies multiplied by their length. Global (all devices together); data parallel, so a chip does its
  share.
- **Kernels** (`hlo_step_counts`): fusions and custom calls in the compiled module's entry computation plus
  each while body times its trip count; collectives the same way; **bytes** as the operands and results of
  every kernel and copy that lie in device memory (HBM: what a kernel reads from and writes to it; buffers
  that XLA:TPU placed in on-chip memory do not count), per chip; and `step_bytes_all`, every operand and
  result wherever it lies (an upper bound, closer to what XLA's own figure counts).
- **Roofline** (`roofline`): step time >= max(FLOPs / peak, bytes / bandwidth) on one chip; videos/s =
  batch / that time. An upper bound on speed: launch overheads, collectives and imperfect overlap are not
  counted.
"""

from __future__ import annotations

import math
import re
from typing import Any

#: Published per-chip peaks: dense bfloat16 matrix FLOP/s, float32 FLOP/s as the exact precision computes
#: (HIGHEST: float32 on the GPU's CUDA cores; six bfloat16 passes on a TPU's MXU, so 1/6 of the bfloat16 peak),
#: and memory bandwidth in bytes/s.
PEAKS: dict[str, dict[str, float]] = {
    "v5e": {"bf16": 197e12, "f32": 197e12 / 6, "hbm": 819e9, "source": "TPU v5e: 197 TFLOP/s bf16, 819 GB/s HBM"},
    "v6e": {"bf16": 918e12, "f32": 918e12 / 6, "hbm": 1640e9,
            "source": "TPU v6e (Trillium): 918 TFLOP/s bf16, 1640 GB/s HBM"},
    "v5p": {"bf16": 459e12, "f32": 459e12 / 6, "hbm": 2765e9, "source": "TPU v5p: 459 TFLOP/s bf16, 2765 GB/s HBM"},
    "h100": {"bf16": 989.4e12, "f32": 66.9e12, "hbm": 3.35e12,
             "source": "H100 SXM 80GB: 989 TFLOP/s bf16 dense, 67 TFLOP/s fp32, 3.35 TB/s HBM3"},
}


def chip_of(target: str) -> str | None:
    """The `PEAKS` key of a target name (``v5e:2x2`` -> ``v5e``, ``h100`` -> ``h100``), or None."""
    name = target.split(":")[0].lower()
    return name if name in PEAKS else None


#: device_kind substrings of the chips in `PEAKS`
_KINDS = (("h100", "h100"), ("v5 lite", "v5e"), ("v5e", "v5e"), ("v6 lite", "v6e"), ("v6e", "v6e"), ("v5p", "v5p"))


def chip_of_device(device_kind: str) -> str | None:
    """The `PEAKS` key of a jax device's ``device_kind`` ("NVIDIA H100 80GB HBM3", "TPU v5 lite", ...)."""
    kind = device_kind.lower()
    return next((chip for key, chip in _KINDS if key in kind), None)


def estimate(fn: Any, args: tuple, compiled: Any, precision: str, batch: int) -> dict[str, Any]:
    """The roofline of one compiled step on the device jax runs on (`roofline`), from the step's FLOPs
    (`step_flops`, split over the devices) and its compiled kernels' device-memory bytes; all None on a device
    `PEAKS` does not know."""
    import jax

    chip = chip_of_device(jax.devices()[0].device_kind)
    if chip is None:  # no published peaks for this device (e.g. a CPU): nothing to bound, nothing to count
        return {"chip": None, **roofline(None, precision, None, None, batch)}
    counts = hlo_step_counts(compiled.as_text())
    flops = step_flops(fn, args) / jax.device_count()
    return {"chip": chip, "flops": flops, "bytes": counts["step_bytes"], "launches": counts["step_launches"],
            **roofline(chip, precision, flops, counts["step_bytes"], batch)}


# ---------------------------------------------------------------------------------------------------------
# FLOPs from the jaxpr
# ---------------------------------------------------------------------------------------------------------
def _dot_flops(eqn: Any) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    out = eqn.outvars[0].aval.shape
    return 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)


def _conv_flops(eqn: Any) -> float:
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
    kernel = math.prod(rhs[d] for d in spec[1:])  # input features x kernel window
    return 2.0 * math.prod(out) * kernel / max(1, eqn.params.get("batch_group_count", 1))


def _sub_jaxprs(eqn: Any) -> list[tuple[Any, float]]:
    """(jaxpr, times it runs) of the computations an equation calls."""
    name, p = eqn.primitive.name, eqn.params
    if name == "scan":
        return [(p["jaxpr"], float(p["length"]))]
    if name == "while":
        return [(p["body_jaxpr"], 1.0), (p["cond_jaxpr"], 1.0)]
    if name == "cond":
        return [(max(p["branches"], key=lambda j: jaxpr_flops(j)), 1.0)]
    out = []
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in p and p[key] is not None:
            out.append((p[key], 1.0))
    return out


def jaxpr_flops(jaxpr: Any) -> float:
    """FLOPs of the matrix products and convolutions of a (closed) jaxpr, loops counted per iteration."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            total += _dot_flops(eqn)
        elif eqn.primitive.name == "conv_general_dilated":
            total += _conv_flops(eqn)
        else:
            for sub, times in _sub_jaxprs(eqn):
                total += times * jaxpr_flops(sub)
    return total


def step_flops(fn: Any, args: tuple) -> float:
    """Global FLOPs of one call of `fn` (a jitted function) on abstract `args`."""
    return jaxpr_flops(fn.trace(*args).jaxpr)


# ---------------------------------------------------------------------------------------------------------
# Kernels, collectives and bytes from the compiled HLO
# ---------------------------------------------------------------------------------------------------------
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
          "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(" + "|".join(sorted(_BYTES, key=len, reverse=True)) + r")\[([\d,]*)\](\{[^}]*\})?")
_ON_CHIP = re.compile(r"S\([1-9]\d*\)")  # a layout's memory space other than device memory (a TPU's VMEM)
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*)$")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
#: instructions that run as kernels of their own and touch device memory (beyond fusions and custom calls)
_MEMORY_OPS = {"copy", "copy-start", "dot", "convolution", "gather", "scatter", "sort", "reduce", "transpose",
               "dynamic-slice", "dynamic-update-slice", "concatenate", "pad", "reduce-window", "select-and-scatter",
               *_COLLECTIVES, *(c + "-start" for c in _COLLECTIVES)}


def shape_bytes(text: str, on_chip: bool = False) -> int:
    """Bytes in device memory of every array shape written in `text` (``f32[64,512]{1,0}`` ...): arrays whose
    layout puts them in another memory space (``S(1)``: on-chip memory that XLA:TPU prefetches into) are not
    device-memory traffic and count 0, unless `on_chip` (then every array counts, wherever it lies)."""
    return sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
               for t, dims, layout in _SHAPE.findall(text) if on_chip or not _ON_CHIP.search(layout or ""))


def _opcode(rhs: str) -> tuple[str, int]:
    """(opcode, index where its operand list starts) of an instruction's right-hand side."""
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
    start = i + (len(rhs[i:]) - len(rest))
    paren = rest.find("(")
    return (rest[:paren] if paren >= 0 else rest), start + max(paren, 0)


def _operands(rhs: str, start: int) -> str:
    """The operand list text of an instruction (from its opening parenthesis to the matching one)."""
    depth = 0
    for j in range(start, len(rhs)):
        depth += (rhs[j] == "(") - (rhs[j] == ")")
        if depth == 0:
            return rhs[start: j + 1]
    return rhs[start:]


def parse_hlo(text: str) -> tuple[str | None, dict[str, list[tuple[str, str]]]]:
    """(entry name, computation name -> [(opcode, instruction right-hand side)]) of an HLO module's text."""
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
            comps[current].append((_opcode(m.group(1))[0], m.group(1)))
    return entry, comps


def _attr(rhs: str, name: str) -> list[str]:
    m = re.search(rf"\b{name}=\{{([^}}]*)\}}", rhs) or re.search(rf"\b{name}=%?([\w.\-]+)", rhs)
    return [s.strip().lstrip("%") for s in m.group(1).split(",")] if m else []


def _bound(cond: list[tuple[str, str]]) -> int | None:
    """The trip count a while condition ``i < N`` implies for a counter from 0 (as `lax.scan` lowers), where XLA
    does not annotate it (XLA:TPU): N when the condition is one compare LT against its one integer constant."""
    consts = [re.search(r"constant\((-?\d+)\)", rhs) for op, rhs in cond if op == "constant"]
    compares = [rhs for op, rhs in cond if op == "compare"]
    if len(consts) == 1 and consts[0] and len(compares) == 1 and "direction=LT" in compares[0]:
        return int(consts[0].group(1))
    return None


def _zero() -> dict[str, float]:
    return {"fusion": 0, "custom-call": 0, "collective": 0, "bytes": 0, "bytes_all": 0}


def hlo_step_counts(text: str) -> dict[str, Any]:
    """Kernel launch sites (fusions and custom calls), collectives and kernel memory traffic of a compiled
    module: in the entry computation (with the computations it calls: command buffers, conditional branches,
    async wrappers) and per while loop (body plus condition, run once per iteration; nested loops counted in
    their own entry), and per step: entry + every loop times its trip count (an unknown trip count counts once).
    """
    entry, comps = parse_hlo(text)
    loops: list[dict[str, Any]] = []

    def count(name: str, seen: tuple = ()) -> dict[str, float]:
        c = _zero()
        if name not in comps or name in seen:
            return c
        for op, rhs in comps[name]:
            if op in ("fusion", "custom-call"):
                c[op] += 1
            elif op.startswith(_COLLECTIVES):
                c["collective"] += not op.endswith("-done")
            if op in ("fusion", "custom-call") or op in _MEMORY_OPS:
                result, operands = rhs[: rhs.find(op)], _operands(rhs, _opcode(rhs)[1])
                c["bytes"] += shape_bytes(result) + shape_bytes(operands)
                c["bytes_all"] += shape_bytes(result, True) + shape_bytes(operands, True)
            if op == "while":
                body, cond = _attr(rhs, "body"), _attr(rhs, "condition")
                trip = _TRIP.search(rhs)
                trip = int(trip.group(1)) if trip else _bound(comps.get(cond[0], []) if cond else [])
                inner = _zero()
                for sub in body + cond:
                    for k, v in count(sub, (*seen, name)).items():
                        inner[k] += v
                loops.append({"body": body[0] if body else "?", "trip_count": trip,
                              "launches": inner["fusion"] + inner["custom-call"], **inner})
            elif op in ("call", "conditional", "async-start") or op.endswith("-start") and "calls=" in rhs:
                subs = _attr(rhs, "to_apply") + _attr(rhs, "calls") + _attr(rhs, "branch_computations") + \
                    _attr(rhs, "true_computation") + _attr(rhs, "false_computation")
                for sub in subs:
                    for k, v in count(sub, (*seen, name)).items():
                        c[k] += v
        return c

    top = count(entry) if entry else _zero()
    loops.reverse()  # outermost first (a nested loop is appended before the loop that holds it)
    per_step = {k: top[k] + sum(lp[k] * (lp["trip_count"] or 1) for lp in loops) for k in top}
    return {"entry": top["fusion"] + top["custom-call"], **{f"entry_{k}": v for k, v in top.items()},
            "loops": loops, "step_launches": per_step["fusion"] + per_step["custom-call"],
            "step_collectives": per_step["collective"], "step_bytes": per_step["bytes"],
            "step_bytes_all": per_step["bytes_all"]}


# ---------------------------------------------------------------------------------------------------------
# Roofline
# ---------------------------------------------------------------------------------------------------------
def roofline(chip: str | None, precision: str, flops_per_chip: float | None, bytes_per_chip: float | None,
             batch: int) -> dict[str, float | None]:
    """Lower bound of a step's time on one chip (`PEAKS`), and the videos/s it allows for the whole batch."""
    if chip is None or not flops_per_chip or not bytes_per_chip:
        return {"compute_s": None, "memory_s": None, "step_s": None, "videos_per_s": None, "bound": None}
    peak = PEAKS[chip]
    compute = flops_per_chip / peak["bf16" if precision == "fast" else "f32"]
    memory = bytes_per_chip / peak["hbm"]
    step = max(compute, memory)
    return {"compute_s": compute, "memory_s": memory, "step_s": step, "videos_per_s": batch / step,
            "bound": "memory" if memory >= compute else "compute"}


__all__ = ["PEAKS", "chip_of", "chip_of_device", "estimate", "hlo_step_counts", "jaxpr_flops", "parse_hlo",
           "roofline", "shape_bytes", "step_flops"]
