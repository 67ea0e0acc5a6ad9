"""The optimizer recipe against torch's SGD and a small torch version of upstream's schedule (docs/UPSTREAM.md §6)."""

from __future__ import annotations

import bisect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from fixture_inputs import manifest_state_dict, read_json

from l2l_jax import recipe as R
from l2l_jax import variants

SHAPES = {"kernel": (5, 3), "bias": (3,), "bn": {"scale": (3,), "bias": (3,)}}


class TorchWarmupMultiStep(torch.optim.lr_scheduler.LRScheduler):
    """Upstream's warm-up multistep rule written from docs/UPSTREAM.md §6, as a torch scheduler."""

    def __init__(self, optimizer, milestones, warmup_iters, gamma=0.1, warmup_factor=1e-5):
        self.milestones, self.warmup_iters = list(milestones), warmup_iters
        self.gamma, self.warmup_factor = gamma, warmup_factor
        super().__init__(optimizer)

    def get_lr(self):
        k = self.last_epoch
        w = 1.0
        if k < self.warmup_iters:
            a = float(k) / self.warmup_iters
            w = self.warmup_factor * (1 - a) + a
        return [b * w * self.gamma ** bisect.bisect_right(self.milestones, k) for b in self.base_lrs]


def _params(variant: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)

    def leaf(shape):
        return rng.standard_normal(shape).astype(np.float32)

    return {m: jax.tree.map(leaf, SHAPES, is_leaf=lambda x: isinstance(x, tuple))
            for m in variants.get(variant).modules}


def _leaves(tree) -> list[tuple[str, np.ndarray]]:
    return [(jax.tree_util.keystr(p), np.asarray(v)) for p, v in jax.tree_util.tree_leaves_with_path(tree)]


CONFIGS = [
    dict(variant="two", freeze=True, with_avgpool_ce_loss=True),  # published: prediction_fc no grad
    dict(variant="two", freeze=True, with_lstm_ce_loss=True),  # net_classifier no grad
    dict(variant="two", freeze=False, with_avgpool_ce_loss=True, with_lstm_ce_loss=True),
    dict(variant="single", freeze=True, with_avgpool_ce_loss=True, with_lstm_ce_loss=True),
    dict(variant="single", freeze=False, with_lstm_ce_loss=True, hard=True),  # only rnn + prediction_fc
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("warmup", [0, 3])
def test_optimizer_matches_torch_sgd(cfg, warmup):
    rec = R.Recipe(lr=0.05, momentum=0.8, weight_decay=1e-3, milestones=(2, 4, 4), warmup_iters=warmup, **cfg)
    params = _params(rec.variant, 0)
    labels = rec.module_labels()
    no_grad = rec.no_grad_modules()

    tparams = {m: {k: torch.tensor(v.copy(), requires_grad=True) for k, v in _leaves(sub)}
               for m, sub in params.items()}
    groups = [{"params": [t for m in g.modules for t in tparams[m].values()], "lr": base}
              for g, base in zip(rec.groups(), rec.group_base_lrs(), strict=True)]
    opt = torch.optim.SGD(groups, lr=rec.lr, momentum=rec.momentum, weight_decay=rec.weight_decay,
                          nesterov=True, dampening=0)
    sched = TorchWarmupMultiStep(opt, rec.milestones, rec.warmup_iters)

    tx = rec.optimizer()
    state = tx.init(params)
    update = jax.jit(tx.update)
    rng = np.random.default_rng(1)
    moved = set()
    for k in range(6):
        # The same random gradient for every leaf, also for leaves torch sees without a gradient path:
        # the JAX side must ignore those.
        grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
        assert [pg["lr"] for pg in opt.param_groups] == pytest.approx(rec.group_lrs(k), rel=1e-12)
        for m, sub in tparams.items():
            for (key, g) in _leaves(grads[m]):
                sub[key].grad = None if m in no_grad else torch.from_numpy(g.copy())
        opt.step()
        sched.step()
        upd, state = update(grads, state, params)
        params = optax.apply_updates(params, upd)
        for m, sub in params.items():
            for key, v in _leaves(sub):
                ref = tparams[m][key].detach().numpy()
                np.testing.assert_allclose(v, ref, rtol=1e-6, atol=1e-8, err_msg=f"{m}{key} step {k}")
    # What never moves: modules in no group, lr-0 groups, no-gradient modules.
    init = _params(rec.variant, 0)
    for m in variants.get(rec.variant).modules:
        same = all(np.array_equal(a, b) for (_, a), (_, b) in zip(_leaves(params[m]), _leaves(init[m]),
                                                                    strict=True))
        if not same:
            moved.add(m)
    frozen = {m for m, lab in labels.items() if lab == R.FROZEN}
    zero_lr = {m for g in rec.groups() if g.lr_factor == 0 for m in g.modules}
    assert moved == set(variants.get(rec.variant).modules) - frozen - zero_lr


def test_groups_of_the_freeze_recipes():
    two = R.param_groups("two", True)
    assert [g.name for g in two] == ["image_queryfeature_mlp", "audio_queryfeature_mlp", "prediction_fc",
                                     "image_key_conv1x1", "audio_key_conv1x1", "rnn", "net_classifier",
                                     "net_imageAudio"]
    assert [g.lr_factor for g in two] == [1, 1, 1, 1, 1, 1, 0.1, 0]
    assert "modality_attention" not in {m for g in two for m in g.modules}
    assert [g.name for g in R.param_groups("single", True)] == ["queryfeature_mlp", "prediction_fc",
                                                                "key_conv1x1", "rnn", "net_classifier"]
    assert R.param_groups("two", False)[0].modules == variants.get("two").modules
    rec = R.Recipe("two", freeze=True, with_avgpool_ce_loss=True)
    assert rec.module_labels()["modality_attention"] == R.FROZEN
    assert rec.module_labels()["prediction_fc"] == R.FROZEN  # quirk 14
    with pytest.raises(ValueError, match="does not match"):
        rec.param_labels(_params("single", 0))


def test_no_grad_modules_rules():
    def ng(variant, a, l, **kw):
        return R.no_grad_modules(variant, with_avgpool_ce_loss=a, with_lstm_ce_loss=l, **kw)

    assert ng("two", True, False) == {"prediction_fc"}
    assert ng("two", False, True) == {"net_classifier"}
    assert ng("two", True, True) == set()
    assert ng("single", True, False) == {"prediction_fc"}
    assert ng("single", False, True) == {"net_classifier"}
    assert ng("single", False, True, hard=True) == {"net_classifier", "queryfeature_mlp", "key_conv1x1"}
    assert ng("single", True, True, hard=True) == set()
    assert ng("two", True, False, episode_length=1) == set(variants.get("two").modules) - {"net_imageAudio",
                                                                                "net_classifier"}
    with pytest.raises(ValueError, match="no loss selected"):
        ng("two", False, False)
    with pytest.raises(ValueError, match="no loss selected"):
        R.Recipe("two").optimizer()


def test_multistep_without_scheduler_matches_torch():
    rec = R.Recipe("two", lr=0.02, milestones=(2, 5, 5, 7), with_avgpool_ce_loss=True)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=rec.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(rec.milestones), gamma=0.1)
    for k in range(10):
        assert opt.param_groups[0]["lr"] == pytest.approx(rec.lr_at(k), rel=1e-12)
        opt.step()
        sched.step()


def _fixture_runs():
    return [run for f in ("train/two.json", "train/single.json") for run in read_json(f)]


@pytest.mark.parametrize("run", _fixture_runs(), ids=lambda r: r["name"])
def test_fixture_learning_rates(run):
    kw = {k: run[k] for k in ("lr", "momentum", "weight_decay", "with_avgpool_ce_loss", "with_lstm_ce_loss")}
    rec = R.Recipe.from_epochs(
        run["variant"], iters_per_epoch=run["iters_per_epoch"], milestones_epochs=run["milestones_epochs"],
        scheduler=run["scheduler"], warmup_epochs=run["warmup_epochs"], freeze=run["freeze"], **kw,
    )
    sched = [rec.schedule(b) for b in rec.group_base_lrs()]
    for k, step in enumerate(run["steps"]):
        got = rec.group_lrs(k)
        assert len(got) == len(step["lr"])
        for a, b in zip(got, step["lr"], strict=True):
            assert a == pytest.approx(b, rel=1e-12, abs=0)
        np.testing.assert_allclose([float(s(k)) for s in sched], step["lr"], rtol=1e-6)


def test_optax_schedule_follows_float64_rule():
    rec = R.Recipe("single", lr=0.3, milestones=(4, 9), warmup_iters=6, with_lstm_ce_loss=True)
    fn = jax.jit(rec.schedule())
    for k in range(14):
        assert float(fn(jnp.int32(k))) == pytest.approx(rec.lr_at(k), rel=1e-6)


@pytest.mark.parametrize("flags", [(True, False, 1.0, 1.0), (False, True, 1.0, 1.0), (True, True, 0.5, 2.0)])
def test_losses_match_torch_cross_entropy(flags):
    avg, lstm, wa, wl = flags
    rng = np.random.default_rng(3)
    a_logits = rng.standard_normal((7, 12)).astype(np.float32) * 3
    l_logits = rng.standard_normal((7, 12)).astype(np.float32) * 3
    labels = rng.integers(0, 12, 7)
    valid = np.array([1, 1, 1, 1, 1, 0, 0], np.float32)  # two filler rows
    # Filler rows hold garbage: they must not count.
    a_logits[5:] = 1e4
    outputs = {"avgpool_logits": jnp.asarray(a_logits), "lstm_logits": jnp.asarray(l_logits)}
    loss, aux = R.compute_loss(outputs, jnp.asarray(labels), jnp.asarray(valid), with_avgpool_ce_loss=avg,
                               with_lstm_ce_loss=lstm, avgpool_ce_loss_weight=wa, lstm_ce_loss_weight=wl)
    ce = torch.nn.CrossEntropyLoss()
    t_a = ce(torch.from_numpy(a_logits[:5]), torch.from_numpy(labels[:5]))
    t_l = ce(torch.from_numpy(l_logits[:5]), torch.from_numpy(labels[:5]))
    t_loss = 0
    if avg:
        t_loss = t_loss + wa * t_a
    if lstm:
        t_loss = t_loss + wl * t_l
    assert float(aux["avgpool_ce"]) == pytest.approx(float(t_a), rel=1e-6)
    assert float(aux["lstm_ce"]) == pytest.approx(float(t_l), rel=1e-6)
    assert float(loss) == pytest.approx(float(t_loss), rel=1e-6)
    # Without `valid`: plain batch mean.
    full, _ = R.compute_loss(outputs | {"avgpool_logits": jnp.asarray(l_logits)}, jnp.asarray(labels),
                             with_avgpool_ce_loss=True, with_lstm_ce_loss=False)
    assert float(full) == pytest.approx(float(ce(torch.from_numpy(l_logits), torch.from_numpy(labels))),
                                        rel=1e-6)
    with pytest.raises(ValueError, match="no loss selected"):
        R.compute_loss(outputs, jnp.asarray(labels), with_avgpool_ce_loss=False, with_lstm_ce_loss=False)


@pytest.mark.parametrize("flags", [(True, False, 1.0, 1.0), (False, True, 1.0, 1.0), (True, True, 0.5, 2.0)])
def test_objective_has_the_reported_losss_gradient_bit_for_bit(flags):
    """The train step differentiates `Recipe.objective` (XLA's sums over rows) and reports `Recipe.loss`
    (exact trees): the gradients with respect to the logits must be identical, and the reported cross
    entropies, summed as one tree over both, identical to `cross_entropy`'s."""
    avg, lstm, wa, wl = flags
    rec = R.Recipe("two", with_avgpool_ce_loss=avg, with_lstm_ce_loss=lstm, avgpool_ce_loss_weight=wa,
                   lstm_ce_loss_weight=wl)
    rng = np.random.default_rng(5)
    rows = 37  # not a power of two: the trees pad
    outputs = {k: jnp.asarray(rng.standard_normal((rows, 9)).astype(np.float32) * 4)
               for k in ("avgpool_logits", "lstm_logits")}
    labels = jnp.asarray(rng.integers(0, 9, rows))
    valid = jnp.asarray((rng.random(rows) < 0.8).astype(np.float32))

    exact = jax.jit(jax.grad(lambda o: rec.loss(o, labels, valid)[0]))(outputs)
    plain = jax.jit(jax.grad(lambda o: rec.objective(o, labels, valid)))(outputs)
    for k in outputs:
        np.testing.assert_array_equal(np.asarray(plain[k]), np.asarray(exact[k]), err_msg=k)
    assert np.any(np.asarray(exact["avgpool_logits" if avg else "lstm_logits"]) != 0)

    _, aux = jax.jit(lambda o: rec.loss(o, labels, valid))(outputs)
    for k, name in (("avgpool_logits", "avgpool_ce"), ("lstm_logits", "lstm_ce")):
        alone = jax.jit(R.cross_entropy)(outputs[k], labels, valid)
        assert np.asarray(aux[name]).tobytes() == np.asarray(alone).tobytes(), name


def test_single_has_no_loss_weights():
    with pytest.raises(ValueError, match="no loss weights"):
        R.Recipe("single", avgpool_ce_loss_weight=0.5)


@pytest.mark.parametrize("variant,hard,E", [("two", False, 2), ("two", False, 1), ("single", True, 2)])
def test_no_grad_rule_matches_the_model_gradients(variant, hard, E):
    """`no_grad_modules` names exactly the modules whose gradient is identically zero in the real model."""
    from l2l_jax.model import PreviewConfig, build_model
    from l2l_jax.torch_names import from_state_dict

    D = 512 if variant == "two" else 48
    manifest = "manifests/preview_two_C12.json" if variant == "two" else "manifests/preview_single_C12_D48.json"
    variables = from_state_dict(manifest_state_dict(manifest, 3), variant)
    model = build_model(PreviewConfig(num_classes=12, episode_length=E, feature_dim=D, with_replacement=True),
                        variant)
    rng = np.random.default_rng(0)
    B, L = 3, 12
    feats = [jnp.asarray(np.maximum(rng.standard_normal((B, L, D)), 0), jnp.float32)
             for _ in range(2 if variant == "two" else 1)]
    args = (*feats, jnp.ones((B, L)), jnp.int32(L), jnp.array([0, 4, 7], jnp.int32))
    labels = jnp.array([1, 3, 11])

    def ces(params):
        out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, *args, train=True,
                             hard=hard, mutable=["batch_stats"])
        return R.cross_entropy(out["avgpool_logits"], labels), R.cross_entropy(out["lstm_logits"], labels)

    @jax.jit
    def grads(params):
        _, pullback = jax.vjp(ces, params)
        return pullback((1.0, 0.0))[0], pullback((0.0, 1.0))[0]

    g_avg, g_lstm = grads(variables["params"])

    def used(grads):
        return {m for m, sub in grads.items() if any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(sub))}

    for a, l in [(True, False), (False, True), (True, True)]:
        live = (used(g_avg) if a else set()) | (used(g_lstm) if l else set())
        rule = R.no_grad_modules(variant, with_avgpool_ce_loss=a, with_lstm_ce_loss=l, hard=hard, episode_length=E)
        assert rule == set(variants.get(variant).modules) - live, (a, l)
