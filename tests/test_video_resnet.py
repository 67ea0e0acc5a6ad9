"""l2l_jax.video.video_networks / video_convert: torchvision's video ResNets (r3d_18, mc3_18, r2plus1d_18 and a
Bottleneck R(2+1)D) against torchvision's naming facts (tests/fixtures/videoresnet/state_dicts.json) and against a
plain PyTorch reference (tests/torch_videoresnet_reference.py), random weights, nothing downloaded.

Small clips (2 x 8 x 48 x 48) keep the parity tests within seconds; one r2plus1d_18 test runs the real size
(2 x 16 x 112 x 112).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_videoresnet_reference as R

from l2l_jax.errors import WeightsError
from l2l_jax.numerics import FAST
from l2l_jax.video import video_convert as C
from l2l_jax.video import video_networks as N

FACTS = json.loads((Path(__file__).parent / "fixtures" / "videoresnet" / "state_dicts.json").read_text())
ARCHS = ("r3d_18", "mc3_18", "r2plus1d_18")
ABS_TOL = 1e-4  # max |ours - torch| on features and logits, EXACT (measured <= 7.7e-6)
SMALL = (2, 3, 8, 48, 48)  # NCTHW
FULL = (2, 3, 16, 112, 112)
BOTTLENECK = (1, 1, 1, 1)


def fact(arch: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(s)) for k, s in FACTS["models"][arch]]


def numpy_sd(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def flat_paths(tree) -> dict[str, tuple[int, ...]]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(x))
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_trees_equal(a, b) -> None:
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    assert ta == tb
    for (path, x), (_, y) in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), path


@pytest.fixture(scope="module")
def torch_nets():
    """Random eval-mode torch references (torchvision's init, then random BatchNorm statistics and fc), built once
    per architecture; key "bottleneck" is an R(2+1)D of Bottleneck blocks, one per layer."""
    torch.set_num_threads(2)
    cache: dict[str, torch.nn.Module] = {}

    def get(arch: str) -> torch.nn.Module:
        if arch not in cache:
            torch.manual_seed(len(cache))
            net = R.r2plus1d(R.Bottleneck, BOTTLENECK) if arch == "bottleneck" else R.ARCHS[arch]()
            R.randomize(net, torch.Generator().manual_seed(10 + len(cache)))
            cache[arch] = net.eval()
        return cache[arch]

    return get


def clips(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, jax.Array]:
    """The same random clips as torch NCTHW and as our NTHWC."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x, jnp.asarray(x.numpy().transpose(0, 2, 3, 4, 1))


def parity(module: torch.nn.Module, net: N.VideoResNet, shape: tuple[int, ...]) -> tuple[float, float]:
    """(max |features diff|, max |logits diff|) of our network (the torch module's weights, jit) against torch."""
    x, xj = clips(shape, 5)
    with torch.no_grad():
        ref_features = module.features(x)
        ref_logits = module.fc(ref_features)
    variables = C.from_state_dict(numpy_sd(module), net.spec, net.num_classes)
    features, logits = jax.jit(lambda v, x: net.apply(v, x, with_features=True))(variables, xj)
    assert features.shape == (shape[0], net.spec.feature_dim) and logits.shape == (shape[0], net.num_classes)
    assert features.dtype == logits.dtype == jnp.float32
    return (float(np.abs(np.asarray(features) - ref_features.numpy()).max()),
            float(np.abs(np.asarray(logits) - ref_logits.numpy()).max()))


# ---------------------------------------------------------------- naming facts


def test_fixture_matches_torchvision_parameter_counts():
    """The fixture's parameter tensors (buffers excluded) add up to torchvision's published ``num_params``."""
    for arch in ARCHS:
        params = [s for k, s in fact(arch) if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        assert sum(math.prod(s) for s in params) == FACTS["num_params"][arch], arch


@pytest.mark.parametrize("arch", ARCHS)
def test_names_and_shapes_match_torchvision(arch):
    want = fact(arch)
    assert [(e[0], e[4]) for e in C.entries(arch)] == want
    with torch.device("meta"):  # no storage, no init: just the module tree
        module = R.ARCHS[arch]()
    assert [(k, tuple(v.shape)) for k, v in module.state_dict().items()] == want
    # the Flax model's own variable tree (shapes only: zeros of each shape) converts to exactly those
    net = N.video_resnet(arch)
    shapes = jax.eval_shape(lambda: N.init_variables(net))
    assert sorted(flat_paths(shapes)) == sorted(C.flax_paths(arch))
    sd = C.to_state_dict(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes), arch)
    assert [(k, v.shape) for k, v in sd.items()] == want
    assert sd["stem.1.num_batches_tracked"].dtype == np.int64 and sd["fc.weight"].dtype == np.float32


def test_init_is_torchvisions():
    """Conv3d kaiming_normal_(fan_out, relu), BatchNorm3d 1 and 0, fc N(0, 0.01) and 0 (on the stem alone and
    fc's initialiser: a whole network's 30M draws take seconds on a CPU)."""
    stem = N.Stem("basic").init(jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)))
    kernel = np.asarray(stem["params"]["0"]["kernel"])
    assert kernel.shape == (3, 7, 7, 3, 64)
    assert abs(float(kernel.std()) / math.sqrt(2.0 / (64 * 3 * 7 * 7)) - 1) < 0.05
    bn = {**stem["params"]["1"], **stem["batch_stats"]["1"]}
    assert all(np.all(np.asarray(bn[k]) == v) for k, v in (("scale", 1), ("bias", 0), ("mean", 0), ("var", 1)))
    fc = np.asarray(N.FC_INIT(jax.random.key(1), (512, 400)))
    assert abs(float(fc.std()) - 0.01) < 5e-4 and abs(float(fc.mean())) < 5e-4


@pytest.mark.parametrize("block,layers", [("basic", (3, 4, 6, 3)), ("bottleneck", (3, 4, 6, 3)),
                                          ("bottleneck", BOTTLENECK)])
def test_deeper_r2plus1d_names_match_reference(block, layers):
    """R(2+1)D-34 and the Bottleneck R(2+1)D-50 (and the small Bottleneck one the parity test runs) under the
    reference's torchvision names."""
    with torch.device("meta"):
        module = R.r2plus1d(R.BasicBlock if block == "basic" else R.Bottleneck, layers)
    want = [(k, tuple(v.shape)) for k, v in module.state_dict().items()]
    net = N.r2plus1d(block, layers)
    assert [(e[0], e[4]) for e in C.entries(net.spec)] == want
    if layers == BOTTLENECK:
        shapes = jax.eval_shape(lambda: N.init_variables(net))
        assert sorted(flat_paths(shapes)) == sorted(C.flax_paths(net.spec))
        assert "params/layer1/0/conv3/0/kernel" in C.flax_paths(net.spec)
        assert net.spec.feature_dim == 2048


# ---------------------------------------------------------------- parity with PyTorch (EXACT)


@pytest.mark.parametrize("arch", ARCHS)
def test_matches_torch_eval(torch_nets, arch):
    module = torch_nets(arch)
    d_features, d_logits = parity(module, N.video_resnet(arch), SMALL)
    assert d_features < ABS_TOL and d_logits < ABS_TOL, (d_features, d_logits)
    # and back: state dict -> Flax -> state dict is bit-exact, dtypes included
    theirs = numpy_sd(module)
    again = C.to_state_dict(C.from_state_dict(theirs, arch), arch)
    assert list(again) == list(theirs)
    for k in theirs:
        assert again[k].dtype == theirs[k].dtype and np.array_equal(again[k], theirs[k]), k


def test_bottleneck_matches_torch_eval(torch_nets):
    d_features, d_logits = parity(torch_nets("bottleneck"), N.r2plus1d("bottleneck", BOTTLENECK), (2, 3, 4, 32, 32))
    assert d_features < ABS_TOL and d_logits < ABS_TOL, (d_features, d_logits)


def test_r2plus1d_18_matches_torch_at_full_size(torch_nets):
    """16 frames of 112 x 112, as the Kinetics weights expect."""
    d_features, d_logits = parity(torch_nets("r2plus1d_18"), N.r2plus1d_18(), FULL)
    assert d_features < ABS_TOL and d_logits < ABS_TOL, (d_features, d_logits)


def test_train_mode_batchnorm_matches_torch(torch_nets):
    """BatchNorm3d in train mode: batch statistics, and running statistics updated as torch does."""
    import copy

    module = copy.deepcopy(torch_nets("mc3_18")).train()
    variables = C.from_state_dict(numpy_sd(module), "mc3_18")
    x, xj = clips((2, 3, 4, 32, 32), 6)
    with torch.no_grad():
        ref = module(x).numpy()
    net = N.mc3_18()
    out, updated = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))(variables, xj)
    assert float(np.abs(np.asarray(out) - ref).max()) < ABS_TOL
    ours = C.to_state_dict({**variables, **updated}, "mc3_18")
    for k, v in numpy_sd(module).items():
        if "running" in k:
            np.testing.assert_allclose(ours[k], v, rtol=1e-4, atol=1e-5, err_msg=k)
        elif k.endswith("num_batches_tracked"):
            assert ours[k] == v, k


CONV_CASES = [  # (kernel, stride, padding): every convolution shape the networks use, strides included
    ((1, 3, 3), (1, 2, 2), (0, 1, 1)), ((3, 1, 1), (2, 1, 1), (1, 0, 0)), ((3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ((1, 1, 1), (2, 2, 2), (0, 0, 0)), ((1, 1, 1), (1, 2, 2), (0, 0, 0)), ((3, 7, 7), (1, 2, 2), (1, 3, 3)),
    ((1, 7, 7), (1, 2, 2), (0, 3, 3)), ((3, 3, 3), (1, 1, 1), (1, 1, 1))]


@pytest.mark.parametrize("kernel, stride, padding", CONV_CASES)
def test_conv3d_as_2d_equals_the_3d_convolution(kernel, stride, padding):
    """The 2-D formulation (frames folded, pixels in a line, or time taps stacked on the channels) gives XLA's
    3-D convolution, odd sizes included."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 5, 9, 11, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((*kernel, 4, 6)) / math.sqrt(4 * math.prod(kernel)), jnp.float32)  # outputs ~1
    want = jax.lax.conv_general_dilated(x, w, stride, [(p, p) for p in padding], precision=jax.lax.Precision.HIGHEST,
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    assert np.array_equal(np.asarray(N.conv3d_native(x, w, stride, padding, N.EXACT)), np.asarray(want))
    got = N.conv3d_as_2d(x, w, stride, padding, N.EXACT)
    assert got.shape == want.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("platform, dims", [("cpu", 2), ("tpu", 3), ("cuda", 3)])
def test_2d_form_only_where_the_program_runs_on_a_cpu(platform, dims):
    """The convolutions a network lowers to: 2-D ones for a CPU, XLA's 3-D convolution for a TPU or a GPU
    (where the 2-D forms cost several times the memory traffic)."""
    x, w = jnp.ones((2, 5, 9, 11, 4)), jnp.ones((3, 3, 3, 4, 6))
    f = jax.jit(lambda a, b: N.conv3d_for_platform(a, b, (1, 1, 1), (1, 1, 1), N.EXACT))
    text = f.trace(x, w).lower(lowering_platforms=(platform,)).as_text()
    convs = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    assert convs
    spatial = {line.split("dim_numbers = [b, ")[1].split("]")[0].count(",") for line in convs}
    assert spatial == {dims}  # "0, 1, f" -> 2 commas: 2-D; "0, 1, 2, f" -> 3: 3-D


def test_batchnorm_folds_only_in_fast_eval():
    assert N.folds_batchnorm(FAST, train=False)
    assert not N.folds_batchnorm(FAST, train=True) and not N.folds_batchnorm(N.EXACT, train=False)


@pytest.mark.parametrize("arch", [*ARCHS, "bottleneck"])
def test_fast_numerics_is_close(torch_nets, arch):
    """FAST (BatchNorm folded into the convolutions, bfloat16 operands): finite float32 outputs within 2e-2 of
    EXACT's largest value (measured 2.0e-3 to 5.2e-3); the folding alone (float32 operands) within 1e-5
    (measured <= 7e-7)."""
    net = N.r2plus1d("bottleneck", BOTTLENECK) if arch == "bottleneck" else N.video_resnet(arch)
    variables = C.from_state_dict(numpy_sd(torch_nets(arch)), net.spec, net.num_classes)
    _, xj = clips((2, 3, 8, 48, 48), 7)

    def run(numerics):
        return jax.jit(lambda v, x: net.clone(numerics=numerics).apply(v, x, with_features=True))(variables, xj)

    exact = run(N.EXACT)
    for numerics, bound in ((FAST, 2e-2), (dataclasses.replace(FAST, operand_dtype=None), 1e-5)):
        for e, f in zip(exact, run(numerics), strict=True):
            f = np.asarray(f)
            assert f.dtype == np.float32 and np.all(np.isfinite(f))
            assert np.abs(f - np.asarray(e)).max() / np.abs(np.asarray(e)).max() < bound, (numerics, bound)


# ---------------------------------------------------------------- strict loading


def test_loader_lists_every_mismatch(torch_nets):
    sd = numpy_sd(torch_nets("mc3_18"))
    sd = {f"module.{k}": v for k, v in sd.items()}  # DataParallel's prefix is removed first
    assert_trees_equal(C.from_state_dict(sd, "mc3_18"), C.from_state_dict(numpy_sd(torch_nets("mc3_18")), "mc3_18"))
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    del sd["layer3.1.conv2.1.running_var"]
    del sd["stem.0.weight"]
    sd["layer5.0.conv1.0.weight"] = np.zeros((3, 3), np.float32)
    sd["layer2.0.conv1.0.weight"] = np.zeros((128, 64, 3, 3, 3), np.float32)  # mc3's layer2 is 1x3x3
    sd["stem.1.num_batches_tracked"] = np.zeros((), np.float32)
    with pytest.raises(WeightsError) as e:
        C.from_state_dict(sd, "mc3_18", what="mine.pth")
    msg = str(e.value)
    for part in ("mine.pth (mc3_18)", "missing (2): stem.0.weight, layer3.1.conv2.1.running_var",
                 "unexpected (1): layer5.0.conv1.0.weight",
                 "layer2.0.conv1.0.weight: shape (128, 64, 3, 3, 3), expected (128, 64, 1, 3, 3)",
                 "stem.1.num_batches_tracked: dtype float32"):
        assert part in msg, part
    with pytest.raises(WeightsError, match=r"missing \(1\): fc.bias"):
        C.check({k: v for k, v in numpy_sd(torch_nets("mc3_18")).items() if k != "fc.bias"}, "mc3_18")


def test_loader_refuses_other_architectures_and_heads(torch_nets):
    sd = numpy_sd(torch_nets("mc3_18"))
    with pytest.raises(WeightsError) as e:  # r3d_18 has mc3_18's names, but 3x3x3 kernels in layer2..layer4
        C.from_state_dict(sd, "r3d_18")
    msg = str(e.value)
    assert "missing" not in msg and "unexpected" not in msg
    assert "layer2.0.conv1.0.weight: shape (128, 64, 1, 3, 3), expected (128, 64, 3, 3, 3)" in msg
    assert "layer2.0.downsample.0.weight" not in msg  # both downsample by 1x1x1 convolutions
    with pytest.raises(WeightsError, match=r"missing \(\d+\): stem.3.weight, .*layer1.0.conv1.0.0.weight"):
        C.from_state_dict(sd, "r2plus1d_18")
    with pytest.raises(WeightsError, match=r"fc.weight: shape \(400, 512\), expected \(10, 512\)"):
        C.from_state_dict(sd, "mc3_18", num_classes=10)
    ten = dict(sd, **{"fc.weight": sd["fc.weight"][:10], "fc.bias": sd["fc.bias"][:10]})
    variables = C.from_state_dict(ten, "mc3_18", num_classes=10)
    assert variables["params"]["fc"]["kernel"].shape == (512, 10)
    with pytest.raises(WeightsError, match=r"variable params/stem/0/kernel has shape \(3, 7, 7, 3, 64\); stem.0.weight "
                       r"must be \(45, 3, 1, 7, 7\)"):
        C.to_state_dict(variables, "r2plus1d_18")
    del variables["params"]["fc"]["bias"]
    with pytest.raises(WeightsError, match="video network variables have no params/fc/bias"):
        C.to_state_dict(variables, "mc3_18", num_classes=10)


def test_specs_and_inputs_are_checked():
    with pytest.raises(ValueError, match="unknown video network 'r3d_34'"):
        N.video_resnet("r3d_34")
    with pytest.raises(ValueError, match="unknown block 'wide'"):
        N.r2plus1d("wide")
    with pytest.raises(ValueError, match="conv_makers must be 4"):
        N.VideoResNetSpec("basic", ("3d",) * 3, (2, 2, 2, 2), "basic")
    with pytest.raises(ValueError, match="layers must be 4 block counts"):
        N.r2plus1d("basic", (2, 2, 0, 2))
    assert N.midplanes(64, 64) == 144 and N.midplanes(64, 128) == 230 and N.midplanes(256, 512) == 921
    net = N.mc3_18()
    shapes = jax.eval_shape(lambda: N.init_variables(net))
    with pytest.raises(ValueError, match=r"NTHWC clips \(B, T, H, W, 3\); got shape \(1, 3, 4, 32, 32\)"):
        jax.eval_shape(net.apply, shapes, jnp.zeros((1, 3, 4, 32, 32)))
