"""benchmarks/step_cost.py: loops count per iteration (FLOPs from the jaxpr, launches, collectives and bytes
from compiled HLO), on-chip buffers are not device-memory traffic, and the roofline takes the slower bound."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import step_cost  # noqa: E402


def test_scan_flops_count_every_iteration():
    def f(x, w, n):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=n)[0]

    x, w = jnp.zeros((8, 16)), jnp.zeros((16, 16))
    one = step_cost.step_flops(jax.jit(lambda x, w: f(x, w, 1)), (x, w))
    assert one == 2 * 8 * 16 * 16
    assert step_cost.step_flops(jax.jit(lambda x, w: f(x, w, 10)), (x, w)) == 10 * one
    grad = step_cost.step_flops(jax.jit(jax.grad(lambda w: f(x, w, 10).sum())), (w,))
    assert grad >= 2 * 10 * one  # forward, plus the backward pass's products


HLO = """HloModule m

%body (p: (s32[], f32[64,512])) -> (s32[], f32[64,512]) {
  %p = (s32[], f32[64,512]{1,0}) parameter(0)
  %fusion.1 = f32[64,512]{1,0} fusion(f32[64,512]{1,0} %a, bf16[512,512]{1,0:S(1)} %w), kind=kOutput, calls=%f1
  %all-reduce.1 = f32[512]{0} all-reduce(f32[512]{0} %x), replica_groups={}, to_apply=%add
  ROOT %t = (s32[], f32[64,512]{1,0}) tuple(%i, %fusion.1)
}

%cond (p: (s32[], f32[64,512])) -> pred[] {
  %p = (s32[], f32[64,512]{1,0}) parameter(0)
  %c = s32[] constant(10)
  ROOT %lt = pred[] compare(s32[] %i, s32[] %c), direction=LT
}

ENTRY %main (a: f32[64,512]) -> f32[64,512] {
  %a = f32[64,512]{1,0} parameter(0)
  %fusion.0 = f32[64,512]{1,0} fusion(f32[64,512]{1,0} %a), kind=kLoop, calls=%f0
  %while.0 = (s32[], f32[64,512]{1,0}) while((s32[], f32[64,512]{1,0}) %t0), condition=%cond, body=%body
  ROOT %r = f32[64,512]{1,0} get-tuple-element(%while.0), index=1
}
"""


def test_hlo_counts_loops_times_their_trips_and_skips_on_chip_buffers():
    c = step_cost.hlo_step_counts(HLO)
    assert c["entry"] == 1 and c["loops"][0]["trip_count"] == 10
    assert c["step_launches"] == 1 + 10 * 1
    assert c["step_collectives"] == 10
    act, red = 64 * 512 * 4, 512 * 4
    # entry fusion: operand + result; loop fusion: activation in + out (its S(1) weights are on chip); all-reduce
    assert c["step_bytes"] == 2 * act + 10 * (2 * act + 2 * red)


def test_roofline_takes_the_slower_bound():
    r = step_cost.roofline("v5e", "fast", flops_per_chip=197e12, bytes_per_chip=819e9 * 2, batch=256)
    assert r["bound"] == "memory" and r["step_s"] == pytest.approx(2.0) and r["videos_per_s"] == pytest.approx(128)
    exact = step_cost.roofline("h100", "exact", flops_per_chip=66.9e12, bytes_per_chip=1.0, batch=10)
    assert exact["bound"] == "compute" and exact["step_s"] == pytest.approx(1.0)
    assert step_cost.chip_of("v6e:2x2") == "v6e" and step_cost.chip_of("cpu") is None
