"""l2l_jax.video: VisualNet / AudioNet against a PyTorch reference (tests/torch_video_reference.py), the state-dict
conversions, the log-mel spectrogram against librosa and the frame preprocessing against PIL.

Small inputs (2 x 64 x 64 images, 2 x 100 x 40 spectrograms) keep the whole file within seconds on a CPU.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_video_reference as tvr

from l2l_jax.errors import WeightsError
from l2l_jax.numerics import FAST
from l2l_jax.video import audio, frames
from l2l_jax.video import convert as C
from l2l_jax.video import networks as N

REL_TOL = 1e-4  # |ours - torch| / max |torch|


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def numpy_sd(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def assert_trees_equal(a, b) -> None:
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    assert ta == tb
    for (path, x), (_, y) in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert np.array_equal(x, y), path


@pytest.fixture(scope="module")
def torch_nets():
    """A random resnet18 (random BatchNorm statistics too), upstream's VisualNet on it and an AudioNet whose
    trunk is a second random resnet18, all in eval mode."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    resnet = tvr.ResNet18()
    tvr.randomize_batchnorm(resnet, gen)
    visual = tvr.VisualNet(copy.deepcopy(resnet)).eval()
    resnet_a = tvr.ResNet18()
    tvr.randomize_batchnorm(resnet_a, gen)
    audio_net = tvr.AudioNet(resnet_a).eval()
    images = torch.randn(2, 3, 64, 64, generator=gen)
    spec = torch.randn(2, 1, 100, 40, generator=gen)
    return {"resnet": resnet, "visual": visual, "audio": audio_net, "images": images, "spec": spec}


# ---------------------------------------------------------------- names


def test_names_match_torch(torch_nets):
    resnet_keys = list(torch_nets["resnet"].state_dict())
    assert C.state_dict_keys("visualnet", "torchvision") == [k for k in resnet_keys if not k.startswith("fc.")]
    assert C.state_dict_keys("visualnet", "upstream") == list(torch_nets["visual"].state_dict())
    assert C.state_dict_keys("audionet", "upstream") == list(torch_nets["audio"].state_dict())
    for net, module in (("visualnet", torch_nets["visual"]), ("audionet", torch_nets["audio"])):
        shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert C.expected_shapes(net, "upstream") == shapes
    # the Flax tree has exactly the table's variables, with the table's shapes
    for net, module in (("visualnet", N.VisualNet()), ("audionet", N.AudioNet())):
        shapes = jax.eval_shape(lambda m=module: N.init_variables(m))
        flat = {"/".join(str(getattr(k, "key", k)) for k in path): tuple(x.shape)
                for path, x in jax.tree_util.tree_flatten_with_path(shapes)[0]}
        assert sorted(flat) == sorted(C.flax_paths(net))
    assert "params/resnet/layer2/0/downsample/0/kernel" in C.flax_paths("visualnet")
    assert "params/freq_conv1x1/bias" in C.flax_paths("audionet")


# ---------------------------------------------------------------- parity with PyTorch


def test_visualnet_matches_torch_eval(torch_nets):
    with torch.no_grad():
        ref = torch_nets["visual"](torch_nets["images"]).numpy()
    sd = numpy_sd(torch_nets["resnet"])  # torchvision names, fc included (ignored)
    variables = C.visualnet_from_state_dict(sd)
    assert_trees_equal(variables, C.visualnet_from_state_dict(numpy_sd(torch_nets["visual"])))  # upstream names
    x = jnp.asarray(torch_nets["images"].numpy().transpose(0, 2, 3, 1))
    out = jax.jit(N.VisualNet().apply)(variables, x)
    assert out.shape == (2, 512) and out.dtype == jnp.float32
    assert rel_err(out, ref) < REL_TOL


def test_audionet_matches_torch_eval(torch_nets):
    with torch.no_grad():
        ref = torch_nets["audio"](torch_nets["spec"]).numpy()
    variables = C.audionet_from_state_dict(numpy_sd(torch_nets["audio"]))
    out = jax.jit(N.AudioNet().apply)(variables, jnp.asarray(torch_nets["spec"].numpy()[:, 0]))
    assert out.shape == (2, 512)
    assert rel_err(out, ref) < REL_TOL


def test_visualnet_matches_torch_train_mode(torch_nets):
    visual = copy.deepcopy(torch_nets["visual"]).train()
    variables = C.visualnet_from_state_dict(numpy_sd(visual))
    with torch.no_grad():
        ref = visual(torch_nets["images"]).numpy()
    x = jnp.asarray(torch_nets["images"].numpy().transpose(0, 2, 3, 1))
    out, updated = jax.jit(lambda v, x: N.VisualNet().apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert rel_err(out, ref) < REL_TOL
    ours = C.visualnet_to_state_dict({**variables, **updated}, "upstream")
    theirs = numpy_sd(visual)
    for key in theirs:
        if "running" in key:
            assert rel_err(ours[key], theirs[key]) < REL_TOL, key
        elif "num_batches_tracked" in key:
            assert ours[key] == theirs[key] and ours[key].dtype == np.int64, key


def test_fast_precision_is_close(torch_nets):
    variables = C.visualnet_from_state_dict(numpy_sd(torch_nets["resnet"]))
    x = jnp.asarray(torch_nets["images"].numpy().transpose(0, 2, 3, 1))
    exact = N.VisualNet().apply(variables, x[:1, :32, :32])
    fast = N.VisualNet(numerics=FAST).apply(variables, x[:1, :32, :32])
    assert fast.dtype == jnp.float32
    assert rel_err(fast, exact) < 5e-2


# ---------------------------------------------------------------- conversion


@pytest.mark.parametrize("net", C.NETS)
@pytest.mark.parametrize("naming", C.NAMINGS)
def test_round_trips_are_bit_exact(torch_nets, net, naming):
    rng = np.random.default_rng(3)
    variables = {"params": {}, "batch_stats": {}}
    for _, collection, path, kind, shape in C.entries(net, "torchvision"):  # random values in the Flax layout
        shape = (shape[2], shape[3], shape[1], shape[0]) if kind == "conv" else shape
        x = rng.integers(0, 10**6, shape, np.int32) if kind == "count" else rng.standard_normal(shape, np.float32)
        tree = variables[collection]
        for name in path[:-1]:
            tree = tree.setdefault(name, {})
        tree[path[-1]] = x
    sd = C.to_state_dict(variables, net, naming)
    assert list(sd) == C.state_dict_keys(net, naming)
    assert all(v.dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float32) for k, v in sd.items())
    back = C.from_state_dict(sd, net, naming)
    assert_trees_equal(back, variables)
    # and from torch: state dict -> Flax -> state dict
    if naming == "upstream":
        theirs = numpy_sd(torch_nets["visual" if net == "visualnet" else "audio"])
        again = C.to_state_dict(C.from_state_dict(theirs, net), net, naming)
        assert list(again) == list(theirs)
        for k in theirs:
            assert again[k].dtype == theirs[k].dtype and np.array_equal(again[k], theirs[k]), k


def test_strict_conversion_lists_every_problem(torch_nets):
    sd = numpy_sd(torch_nets["resnet"])
    del sd["layer3.1.bn2.running_var"]
    del sd["layer1.0.conv1.weight"]
    sd["layer9.0.conv1.weight"] = np.zeros((3, 3), np.float32)
    sd["layer2.0.downsample.0.weight"] = np.zeros((128, 64, 3, 3), np.float32)
    sd["bn1.num_batches_tracked"] = np.zeros((), np.float32)
    sd["layer4.1.bn1.bias"] = sd["layer4.1.bn1.bias"].astype(np.int32)
    with pytest.raises(WeightsError) as e:
        C.visualnet_from_state_dict(sd, what="mine.pth")
    msg = str(e.value)
    for part in ("mine.pth", "missing (2)", "layer3.1.bn2.running_var", "layer1.0.conv1.weight", "unexpected (1)",
                 "layer9.0.conv1.weight", "layer2.0.downsample.0.weight: shape (128, 64, 3, 3), expected "
                 "(128, 64, 1, 1)", "bn1.num_batches_tracked: dtype float32", "layer4.1.bn1.bias: dtype int32"):
        assert part in msg, part
    assert "fc.weight" not in msg  # resnet18's head is ignored, not unexpected
    # the wrong net
    with pytest.raises(WeightsError, match=r"unexpected \(3\): conv1.weight, freq_conv1x1.weight, freq_conv1x1.bias"):
        C.visualnet_from_state_dict(numpy_sd(torch_nets["audio"]))
    # upstream's AudioNet holds one conv1 under two names
    asd = numpy_sd(torch_nets["audio"])
    asd["conv1.weight"] = asd["conv1.weight"] + 1
    with pytest.raises(WeightsError, match="feature_extraction.0.weight differ"):
        C.audionet_from_state_dict(asd)
    with pytest.raises(WeightsError, match=r"missing \(1\): layer4.1.bn2.bias"):
        C.audionet_from_resnet18({k: v for k, v in numpy_sd(torch_nets["resnet"]).items() if k != "layer4.1.bn2.bias"})


def test_audionet_from_imagenet_resnet18(torch_nets, tmp_path):
    resnet = torch_nets["resnet"]
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    sd = C.read_resnet18(path)
    torch.save({"model": {f"module.{k}": v for k, v in resnet.state_dict().items()}}, tmp_path / "dp.pth")
    assert list(C.read_resnet18(tmp_path / "dp.pth")) == list(sd)
    variables = C.audionet_from_resnet18(sd, seed=7)
    # every layer but conv1 and freq_conv1x1 is resnet18's, bit for bit (upstream builds AudioNet(resnet18) so)
    ours = C.audionet_to_state_dict(variables, "upstream")
    theirs = numpy_sd(tvr.AudioNet(copy.deepcopy(resnet)))
    new = {"conv1.weight", "feature_extraction.0.weight", "freq_conv1x1.weight", "freq_conv1x1.bias"}
    assert list(ours) == list(theirs)
    for k in theirs:
        if k not in new:
            assert np.array_equal(ours[k], theirs[k]), k
    # the new layers: upstream's init, seeded
    conv1 = variables["params"]["resnet"]["conv1"]["kernel"]
    assert conv1.shape == (7, 7, 1, 64) and abs(conv1.std() - 0.02) < 0.002 and abs(conv1.mean()) < 0.002
    freq = variables["params"]["freq_conv1x1"]
    assert freq["kernel"].shape == (1, 1, 3, 1) and abs(float(freq["bias"][0])) <= 1 / np.sqrt(3)
    assert_trees_equal(C.audionet_from_resnet18(sd, seed=7), variables)
    assert not np.array_equal(C.audionet_from_resnet18(sd, seed=8)["params"]["resnet"]["conv1"]["kernel"], conv1)
    # and it runs: torch's AudioNet with the same weights gives the same features
    ref_net = tvr.AudioNet(copy.deepcopy(resnet)).eval()
    ref_net.load_state_dict({k: torch.from_numpy(v) for k, v in ours.items()})
    with torch.no_grad():
        ref = ref_net(torch_nets["spec"]).numpy()
    out = jax.jit(N.AudioNet().apply)(variables, jnp.asarray(torch_nets["spec"].numpy()[:, 0]))
    assert rel_err(out, ref) < REL_TOL


def test_audionet_checks_its_input():
    variables = jax.eval_shape(lambda: N.init_variables(N.AudioNet()))
    with pytest.raises(ValueError, match="33..48 frequency bins"):
        jax.eval_shape(N.AudioNet().apply, variables, jnp.zeros((1, 50, 64)))
    with pytest.raises(ValueError, match="NHWC images"):
        jax.eval_shape(N.VisualNet().apply, variables, jnp.zeros((1, 3, 32, 32)))


# ---------------------------------------------------------------- log-mel


def _test_audio() -> np.ndarray:
    """Two 1 s clips: noise + a 440 Hz tone; silence, then a 3 kHz tone with faint noise."""
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    y = np.stack([0.3 * rng.standard_normal(16000) + 0.5 * np.sin(2 * np.pi * 440 * t),
                  0.8 * np.sin(2 * np.pi * 3000 * t) * (t > 0.5) + 0.01 * rng.standard_normal(16000)])
    y[1, :4000] = 0
    return y.astype(np.float32)


@pytest.mark.parametrize("n_fft,pad_mode", [(512, "constant"), (400, "constant"), (512, "reflect")])
def test_log_mel_matches_librosa(n_fft, pad_mode):
    librosa = pytest.importorskip("librosa")
    cfg = audio.LogMelConfig(n_fft=n_fft, pad_mode=pad_mode)
    y = _test_audio()
    ours = np.asarray(jax.jit(audio.log_mel_spectrogram, static_argnums=1)(y, cfg))
    ref = np.stack([np.log(librosa.feature.melspectrogram(
        y=row.astype(np.float64), sr=16000, n_fft=n_fft, hop_length=160, win_length=400, window="hann", center=True,
        pad_mode=pad_mode, power=2.0, n_mels=40, htk=False, norm="slaney") + 1e-6).T for row in y])
    assert ours.shape == ref.shape == (2, 101, 40)
    assert np.abs(ours - ref).max() < 1e-4  # absolute, on the log scale (measured 3.4e-5 .. 4.7e-5)
    np.testing.assert_array_equal(audio.mel_filterbank(cfg), librosa.filters.mel(sr=16000, n_fft=n_fft, n_mels=40))


def test_log_mel_shapes_and_batching():
    y = _test_audio()
    assert audio.num_frames(16000) == 101
    full = np.asarray(audio.log_mel_spectrogram(y))
    assert full.shape == (2, 101, 40) and full.dtype == np.float32
    np.testing.assert_allclose(np.asarray(audio.log_mel_spectrogram(y[1])), full[1], rtol=0, atol=1e-5)
    assert np.all(full[1, :20] == np.float32(np.log(1e-6)))  # silence: log of the offset
    clips = audio.split_clips(np.concatenate([y[0], y[1][:8000]]))
    assert clips.shape == (2, 16000) and np.all(clips[1, 8000:] == 0) and np.array_equal(clips[0], y[0])
    # 40 bins reduce to the 3 frequency positions AudioNet needs
    shapes = jax.eval_shape(N.AudioNet().init, jax.random.key(0), jax.ShapeDtypeStruct(full.shape, jnp.float32))
    assert shapes["params"]["freq_conv1x1"]["kernel"].shape == (1, 1, 3, 1)


# ---------------------------------------------------------------- frames


def test_frames_match_torchvision_pipeline_on_pil():
    from PIL import Image

    rng = np.random.default_rng(0)
    for h, w in ((240, 320), (480, 360), (200, 250)):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([128 + 100 * np.sin(xx / 17.0 + c) * np.cos(yy / 23.0) for c in range(3)], -1)
        img = np.clip(img + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        nh, nw = frames.resized_size(h, w)
        assert min(nh, nw) == 256
        top, left = frames.center_crop_offsets(nh, nw)
        pil = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR), np.float32)[top:top + 224,
                                                                                             left:left + 224] / 255
        ref = (pil - np.array(frames.IMAGENET_MEAN)) / np.array(frames.IMAGENET_STD)
        ours = np.asarray(frames.preprocess_frames(np.stack([img, img[::-1]])))
        assert ours.shape == (2, 224, 224, 3) and ours.dtype == np.float32
        level_diff = np.abs(ours[0] - ref) * np.array(frames.IMAGENET_STD) * 255
        assert level_diff.max() < 1.5  # 8-bit levels (measured <= 1.0: PIL rounds to 8 bits between passes)
    assert frames.resized_size(480, 640) == (256, 341) and frames.center_crop_offsets(256, 341) == (16, 58)
    np.testing.assert_array_equal(frames.first_frame_indices(95, 30.0), [0, 30, 60, 90])
    np.testing.assert_array_equal(frames.first_frame_indices(90, 30.0), [0, 30, 60])
