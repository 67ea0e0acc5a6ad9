"""What this machine's XLA backend can do: float32 matmul rate at the model's shapes, and streaming bandwidth.

    python benchmarks/machine_peak.py [--repeats 20]

The speed targets are ratios to an eager PyTorch run on the same machine; this script gives the ceilings
those ratios run into (BENCHMARKS.md, "Why the targets are out of reach"): GFLOP/s of `jnp.dot` at full
float32 precision for the key conv, the recurrent layers at 64 and 256 rows and a 640-row product, and GB/s
of an elementwise pass (read + write) over a (65536, 512) array. Compiled with the options the train and eval
steps use (`parallel.compiler_options`), timed after a warm-up call, best of --repeats.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import parallel

#: (name, M, K, N) of the products that dominate a step.
SHAPES = (
    ("key conv, eval batch", 36000, 512, 512),
    ("LSTM gates, 64 rows", 64, 1536, 4096),
    ("LSTM gates, 256 rows", 256, 1536, 4096),
    ("query fc1, 64 rows", 64, 1024, 1024),
    ("LSTM input gradient, 64 rows", 64, 4096, 1536),
    ("640 rows", 640, 1536, 4096),
)


def best_seconds(fn, *args, repeats: int) -> float:
    """The fastest of `repeats` timed calls of a compiled function (after one warm-up call)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    opts = parallel.compiler_options()
    rng = np.random.default_rng(0)
    hi = jax.lax.Precision.HIGHEST
    print(f"{jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, options {opts or '-'}")
    print(f"{'float32 matmul':32s} {'M x K x N':>20s} {'ms':>8s} {'GFLOP/s':>8s}")
    dot = jax.jit(lambda a, b: jnp.dot(a, b, precision=hi), compiler_options=opts)
    for name, m, k, n in SHAPES:
        a = jnp.asarray(rng.standard_normal((m, k), np.float32))
        b = jnp.asarray(rng.standard_normal((k, n), np.float32))
        s = best_seconds(dot, a, b, repeats=args.repeats)
        print(f"{name:32s} {f'{m} x {k} x {n}':>20s} {s * 1e3:8.2f} {2 * m * k * n / s / 1e9:8.0f}")
    x = jnp.asarray(rng.standard_normal((65536, 512), np.float32))
    s = best_seconds(jax.jit(lambda v: v * 2.0, compiler_options=opts), x, repeats=args.repeats)
    print(f"{'elementwise x * 2, (65536, 512)':32s} {'':>20s} {s * 1e3:8.2f} {2 * x.nbytes / s / 1e9:6.1f} GB/s")


if __name__ == "__main__":
    main()
