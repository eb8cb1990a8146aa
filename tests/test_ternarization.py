"""Ternarization: the quantizer, NTK-LC moment matching, the callback in both modes and the ``ternary`` codec."""

from __future__ import annotations

import itertools
import math
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from scipy import integrate
from torch import nn
from torch.utils.data import DataLoader

import lightning_compress as lc
from lightning_compress.codec import CodecSpec, get_codec
from lightning_compress.functional.ternarization import (
    GaussianMoments,
    StepFunction,
    match_step_activation,
    quadrature_moments,
    relu_moments,
    sparse_ternary,
    step_moments,
    ternarize,
    ternary_ste,
    ternary_values,
)
from lightning_compress.layers import StepActivation, TernaryLinear
from lightning_compress.models.random_features import RandomFeatureMLP
from tests.helpers.models import CrashAtEpoch, mlp, ordered_loaders, run_ddp_check, trainer_kwargs


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("shape", [(64, 32), (16, 8, 3, 3)])
def test_at_most_three_values_per_channel(shape: tuple[int, ...], per_channel: bool) -> None:
    w = torch.randn(shape)
    values = ternarize(w, per_channel=per_channel).values()
    rows = values.reshape(shape[0], -1) if per_channel else values.reshape(1, -1)
    for row in rows:
        distinct = torch.unique(row)
        assert len(distinct) <= 3
        assert torch.allclose(distinct.abs()[distinct != 0], distinct.abs().max())


def test_scale_minimises_l2_for_the_support() -> None:
    w = torch.randn(8, 50)
    t = ternarize(w)
    for row, sym, scale in zip(w, t.symbols.float(), t.scales, strict=True):
        best = (row * sym).sum() / (sym * sym).sum()  # least-squares scale for fixed symbols
        assert scale == pytest.approx(float(best), rel=1e-5)


def test_threshold_rules() -> None:
    w = torch.randn(4, 1000)
    twn = ternarize(w, rule="twn")
    delta = 0.7 * w.abs().mean(dim=1, keepdim=True)
    assert torch.equal(twn.symbols != 0, w.abs() > delta)
    sparse = ternarize(w, rule="sparsity", sparsity=0.8)
    assert float((sparse.symbols == 0).float().mean()) == pytest.approx(0.8, abs=0.002)
    with pytest.raises(ValueError, match="`rule`"):
        ternarize(w, rule="median")
    with pytest.raises(ValueError, match="`sparsity`"):
        ternarize(w, rule="sparsity")


def test_straight_through_gradient_reaches_latent_weights() -> None:
    w = torch.randn(6, 5, requires_grad=True)
    x = torch.randn(3, 5)
    out = x @ ternary_ste(w).T
    out.sum().backward()
    assert w.grad is not None
    assert torch.allclose(w.grad, torch.ones(3, 6).T @ x)  # identity through the quantizer


@pytest.mark.parametrize("sparsity", [0.3, 0.95])
def test_codec_round_trip_exact_and_picks_the_smaller_coding(tmp_path: Path, sparsity: float) -> None:
    layer = torch.nn.Linear(200, 100)
    with torch.no_grad():
        layer.weight.copy_(ternarize(layer.weight, rule="sparsity", sparsity=sparsity).values())
    path = lc.save(layer, tmp_path / "t.lcz", codecs={"weight": CodecSpec("ternary")})
    record = next(r for r in lc.read_artifact(path).tensors if r.name == "weight")
    loaded = lc.load(path, model=torch.nn.Linear(200, 100))
    assert torch.equal(loaded.weight, layer.weight)
    packed_bytes = 100 * 4 + (200 * 100 * 2) // 8
    if sparsity > 0.9:  # mostly zeros: entropy coding beats 2 bits per symbol by far
        assert record.meta["coding"] == "ans"
        assert record.nbytes < 0.5 * packed_bytes
    else:
        assert record.nbytes <= packed_bytes


def test_codec_refuses_non_ternary_rows() -> None:
    with pytest.raises(ValueError, match="more than one magnitude"):
        get_codec("ternary").encode(torch.tensor([[0.5, -0.25], [1.0, 0.0]]))


# -- Gaussian moments and matching --------------------------------------------------------------------------------
def _reference_moments(fn: object, tau: float, breaks: tuple[float, ...] = ()) -> GaussianMoments:
    """Adaptive-quadrature reference, split at the function's kinks/jumps (in xi units)."""

    def expect(g: object) -> float:
        pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
        edges = [-np.inf, *breaks, np.inf]
        return sum(
            integrate.quad(lambda x: g(x) * pdf(x), a, b, epsabs=1e-13, epsrel=1e-13)[0]
            for a, b in itertools.pairwise(edges)
        )

    f = lambda x: float(fn(np.array([tau * x]))[0])  # noqa: E731
    d0 = expect(f)
    return GaussianMoments(
        d0=d0,
        a1=expect(lambda x: x * f(x)) / tau,
        a2=expect(lambda x: (x * x - 1) * f(x)) / tau**2,
        alpha3=expect(lambda x: (x * x - 1) * (f(x) - d0) ** 2) / tau**2,
        variance=expect(lambda x: (f(x) - d0) ** 2),
    )


def _close(a: GaussianMoments, b: GaussianMoments, tol: float, rtol: float = 0.0) -> bool:
    return bool(
        np.allclose(
            [a.d0, a.a1, a.a2, a.alpha3, a.variance], [b.d0, b.a1, b.a2, b.alpha3, b.variance], atol=tol, rtol=rtol
        )
    )


@pytest.mark.parametrize("tau", [0.3, 1.0, 2.5])
def test_relu_closed_form_agrees_with_quadrature(tau: float) -> None:
    relu = lambda t: np.maximum(t, 0.0)  # noqa: E731
    assert _close(relu_moments(tau), _reference_moments(relu, tau, breaks=(0.0,)), 1e-9)
    # Gauss-Hermite converges slowly at the kink: agreement to ~1e-3, which is why ReLU has a closed form
    assert _close(relu_moments(tau), quadrature_moments(relu, tau), 1e-6, rtol=5e-3)


def test_step_closed_form_and_smooth_quadrature_agree_with_adaptive_quadrature() -> None:
    step = StepFunction((-0.4, 0.3, 1.1), (1.5, 0.0, -0.7, 2.0))
    tau = 0.8
    assert _close(step_moments(step, tau), _reference_moments(step, tau, breaks=(-0.5, 0.375, 1.375)), 1e-9)
    assert _close(quadrature_moments(np.tanh, tau), _reference_moments(np.tanh, tau), 1e-9)


@pytest.mark.parametrize("tau", [0.35, 1.0, 3.0])
def test_hidden_matching_equals_the_targets(tau: float) -> None:
    target = relu_moments(tau)
    step = match_step_activation(target, tau * 1.3, restarts=30)
    got = step_moments(step, tau * 1.3)
    assert np.abs(got.matched() - target.matched()).max() < 1e-6
    assert step.residual < 1e-6
    assert got.a1 > 0  # rises like ReLU (the mirror solution is flipped)
    assert step.levels[0] == step.levels[2]
    assert step.levels[1] == 0.0


def test_last_layer_matching_reports_its_true_residual() -> None:
    target = relu_moments(1.0)
    solvable = match_step_activation(target, 0.5, last=True, target_tau=math.sqrt(target.variance), restarts=100)
    got = step_moments(solvable, 0.5).matched(with_variance=True)
    assert np.abs(got - target.matched(with_variance=True)).max() < 1e-6
    assert solvable.residual < 1e-6
    # a compressed scale twice the original's has no exact solution: the residual says so, truthfully
    hard = match_step_activation(target, 2.0, last=True, target_tau=math.sqrt(target.variance), restarts=10)
    actual = np.linalg.norm(step_moments(hard, 2.0).matched(with_variance=True) - target.matched(with_variance=True))
    assert hard.residual == pytest.approx(actual, rel=1e-9, abs=1e-15)
    assert hard.residual > 1e-3


def test_sparse_ternary_weights_are_exact_and_reproducible() -> None:
    w = sparse_ternary((300, 200), 0.9, seed=3)
    k = round(0.05 * 60000)
    assert int((w > 0).sum()) == k
    assert int((w < 0).sum()) == k
    assert torch.allclose(w[w != 0].abs(), torch.tensor(1 / math.sqrt(0.1)))
    assert torch.equal(w, sparse_ternary((300, 200), 0.9, seed=3))
    assert not torch.equal(w, sparse_ternary((300, 200), 0.9, seed=4))
    assert float(w.pow(2).mean()) == pytest.approx(1.0, rel=1e-4)


# -- kernel equivalence (the paper's claim, at small scale) ---------------------------------------------------------
def _conjugate_kernel(net: RandomFeatureMLP, x: torch.Tensor, layer_index: int) -> torch.Tensor:
    """Gram matrix of the centred, scaled features after hidden layer ``layer_index``."""
    with torch.no_grad():
        h = (net.features(x) - net.input_mean) * net.input_scale
        for layer, act, center in list(zip(net.hidden, net.activations, net.centers, strict=True))[: layer_index + 1]:
            h = (act(layer(h)) - center) / math.sqrt(layer.out_features)
    return h @ h.T


def _ntk_compressed(width: int, x: torch.Tensor, seed: int) -> tuple[RandomFeatureMLP, RandomFeatureMLP]:
    torch.manual_seed(seed)
    dense = RandomFeatureMLP(x.shape[1], [width, width, width // 2], 2)
    dense.calibrate(x)
    compressed = RandomFeatureMLP(x.shape[1], [width, width, width // 2], 2)
    model = lc.ImageClassifier(compressed, num_classes=2)
    cb = lc.Ternarization(mode="ntk", sparsity=0.9, seed=seed, calibration_batches=1, restarts=10)
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(None, max_epochs=0))
    trainer.fit(
        model, DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=len(x))
    )
    return dense, compressed


def test_conjugate_kernel_of_the_ternary_net_approaches_the_dense_one_as_width_grows() -> None:
    g = torch.Generator().manual_seed(0)
    p, n = 256, 256
    means = torch.randn(2, p, generator=g) / 2
    x = means[torch.arange(n) % 2] + torch.randn(n, p, generator=g)  # two-class Gaussian mixture
    gaps: dict[int, list[float]] = {}
    for width in (256, 2048):
        dense, compressed = _ntk_compressed(width, x, seed=0)
        gaps[width] = []
        # every layer; the last one falls back to the two-level form (variance unmatched), so its kernel carries a
        # scale gap too, which still shrinks with width
        for layer_index in (0, 1, 2):
            k_dense = _conjugate_kernel(dense, x, layer_index)
            k_tern = _conjugate_kernel(compressed, x, layer_index)
            gaps[width].append(
                float(torch.linalg.matrix_norm(k_dense - k_tern, 2) / torch.linalg.matrix_norm(k_dense, 2))
            )
    for small, large in zip(gaps[256], gaps[2048], strict=True):
        assert large < 0.5 * small, gaps


# -- the callback: qat ------------------------------------------------------------------------------------------------
def _classifier(backbone: torch.nn.Module, lr: float = 0.01) -> lc.ImageClassifier:
    return lc.ImageClassifier(backbone, num_classes=4, optimizer=partial(torch.optim.Adam, lr=lr))


def test_qat_layers_auto_choice_and_three_values_per_channel(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _classifier(mlp(dim=16, hidden=64))  # 1024 / 4096 / 256 weights: the last layer is < 10%
    cb = lc.Ternarization()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Inspect(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
            layer = pl_module.backbone[2]
            assert isinstance(layer, TernaryLinear)
            seen.append((layer.ternary_weight().detach().clone(), layer.weight.detach().clone()))

    train, val = ordered_loaders()
    pl.Trainer(callbacks=[cb, Inspect()], **trainer_kwargs(tmp_path, max_epochs=1)).fit(model, train, val)
    assert cb.ternarized == ["0.weight", "2.weight"]  # first layer is 16% of the weights, last 5%
    for row, latent in zip(*seen[-1], strict=True):
        assert len(torch.unique(row)) <= 3
        assert not torch.equal(row, latent)
    # baked at the end: the plain layer holds the ternary values, the fp32 layer does not
    assert type(model.backbone[2]) is torch.nn.Linear
    for row in model.backbone[2].weight:
        assert len(torch.unique(row)) <= 3
    assert len(torch.unique(model.backbone[4].weight)) > 3


def test_qat_gradients_reach_the_latent_weights() -> None:
    from lightning_compress.layers import ternary_layer

    layer = ternary_layer(torch.nn.Linear(8, 4))
    x = torch.randn(16, 8)
    layer(x).pow(2).sum().backward()
    assert layer.weight.grad is not None
    assert layer.weight.grad.abs().sum() > 0
    expected = 2 * (x @ layer.ternary_weight().detach().T + layer.bias.detach()).T @ x  # straight through
    assert torch.allclose(layer.weight.grad, expected, atol=1e-4)


def test_step_activation_forward_is_exact_and_has_surrogate_gradients() -> None:
    act = StepActivation.from_step(StepFunction((-1.0, 0.5), (2.0, 0.0, 3.0)), learnable=True, ramp=0.25)
    x = torch.tensor([-2.0, -0.9, 0.0, 0.4, 0.6, 5.0], requires_grad=True)
    y = act(x)
    assert y.tolist() == [2.0, 0.0, 0.0, 0.0, 3.0, 3.0]
    y.sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == pytest.approx([0, -4.0, 0, 6.0, 6.0, 0])  # jump / (2 ramp) inside the ramps
    assert act.amplitudes.grad is not None  # exact: how many inputs fall on each amplitude's levels
    assert act.amplitudes.grad.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("activations", [False, "binary", "ternary"])
def test_qat_artifact_round_trip_is_exact(tmp_path: Path, activations: bool | str) -> None:
    torch.manual_seed(0)
    model = _classifier(mlp())
    cb = lc.Ternarization(activations=activations, first_layer="ternary", last_layer="ternary", restarts=5)
    train, val = ordered_loaders()
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=2)).fit(model, train, val)
    path = lc.save(model, tmp_path / "t.lcz")
    codecs = {r.name: r.codec for r in lc.read_artifact(path).tensors}
    assert [n for n, c in codecs.items() if c == "ternary"] == ["0.weight", "2.weight", "4.weight"]
    loaded = lc.load(path, model=mlp())  # a fresh plain MLP: step activations are put back from the header
    x = torch.randn(64, 16)
    model.backbone.eval()
    assert torch.equal(loaded(x), model.backbone(x))
    steps = [m for m in loaded.modules() if isinstance(m, StepActivation)]
    assert len(steps) == (0 if not activations else 2)
    if activations:
        levels = torch.unique(torch.cat([s(torch.randn(1000) * 5) for s in steps[:1]]))
        assert len(levels) <= (2 if activations == "binary" else 3)
    assert path.stat().st_size < 0.3 * 4 * sum(p.numel() for p in mlp().parameters())


def test_qat_learns_from_a_trained_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _classifier(mlp())
    train, val = ordered_loaders()
    pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=3)).fit(model, train, val)
    dense_acc = lc.module.evaluate_accuracy(model.backbone, val)
    assert dense_acc > 0.8  # chance: 0.25
    pl.Trainer(callbacks=[lc.Ternarization()], **trainer_kwargs(tmp_path, max_epochs=2)).fit(model, train, val)
    assert lc.module.evaluate_accuracy(model.backbone, val) > dense_acc - 0.05


def _fit_qat(root: Path, ckpt_path: str | None = None, crash_at: int | None = None, start: float = 0.0) -> Path:
    torch.manual_seed(0)
    model = _classifier(mlp())
    cb = lc.Ternarization(activations=True, restarts=5, start=start)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
    extra = [CrashAtEpoch(crash_at)] if crash_at is not None else []
    trainer = pl.Trainer(callbacks=[cb, ckpt, *extra], **trainer_kwargs(root, max_epochs=4, enable_checkpointing=True))
    train, val = ordered_loaders()
    trainer.fit(model, train, val, ckpt_path=ckpt_path, weights_only=False if ckpt_path else None)
    return lc.save(model, root / "final.lcz")


@pytest.mark.parametrize("start", [0.0, 0.25])
def test_resume_gives_the_same_artifact(tmp_path: Path, start: float) -> None:
    """Also mid-window: the step activations inserted after the fit began are put back before the checkpoint loads."""
    full = _fit_qat(tmp_path / "full", start=start)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit_qat(tmp_path / "part", crash_at=2, start=start)
    ckpt = sorted((tmp_path / "part" / "ckpt").glob("*.ckpt"))[-1]
    resumed = _fit_qat(tmp_path / "resumed", ckpt_path=str(ckpt), start=start)
    assert lc.read_artifact(resumed).state_dict().keys() == lc.read_artifact(full).state_dict().keys()
    for (name, a), b in zip(
        lc.read_artifact(full).state_dict().items(), lc.read_artifact(resumed).state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.ddp
def test_ddp_ranks_hold_identical_ternary_weights(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp_check("ternarization", tmp_path)
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(k.endswith("thresholds") for k in rank0)  # step activations on both ranks
    codecs = {r.name: r.codec for r in lc.read_artifact(tmp_path / "model.lcz").tensors}
    assert codecs["0.weight"] == codecs["4.weight"] == "ternary"


# -- the callback: ntk ------------------------------------------------------------------------------------------------
def _rf_fit(
    tmp_path: Path,
    storage: str = "symbols",
    epochs: int = 5,
    activations: str = "step",
    learnable: bool = False,
    activation_lr_scale: float = 1.0,
    model: pl.LightningModule | None = None,
) -> tuple[pl.LightningModule, lc.Ternarization]:
    torch.manual_seed(0)
    if model is None:
        model = lc.ImageClassifier(
            RandomFeatureMLP(16, [128, 128, 64], 4), num_classes=4, optimizer=partial(torch.optim.Adam, lr=0.1)
        )
    cb = lc.Ternarization(
        mode="ntk",
        sparsity=0.5,
        storage=storage,
        restarts=10,
        ntk_activations=activations,
        ntk_learnable_activations=learnable,
        activation_lr_scale=activation_lr_scale,
    )
    train, val = ordered_loaders()
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=epochs)).fit(model, train, val)
    return model, cb


def test_ntk_mode_replaces_weights_and_activations_and_trains_only_the_head(tmp_path: Path) -> None:
    model, cb = _rf_fit(tmp_path)
    net = model.backbone
    assert isinstance(net, RandomFeatureMLP)
    for i, layer in enumerate(net.hidden):
        assert torch.equal(
            layer.weight, sparse_ternary(tuple(layer.weight.shape), 0.5, seed=i)
        )  # unchanged by training
        assert not layer.weight.requires_grad
    assert all(isinstance(a, StepActivation) for a in net.activations)
    assert max(cb.residuals) < 1e-6  # every matching system solved exactly (the last one by the fallback)
    # centring constants are the step activations' Gaussian means at the compressed net's scales
    assert net.centers[0].item() == pytest.approx(step_moments(net.activations[0].step_function(), 1.0).d0, rel=1e-6)
    summary = cb.summary()
    assert summary["ternary/artifact_bytes_seed"] < summary["ternary/artifact_bytes_symbols"]
    assert summary["ternary/sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert lc.module.evaluate_accuracy(net, ordered_loaders()[0]) > 0.8  # the head learned (4 classes)


def test_ntk_original_activations_keep_relu_and_ternarise_weights(tmp_path: Path) -> None:
    model, cb = _rf_fit(tmp_path, activations="original")
    net = model.backbone
    assert isinstance(net, RandomFeatureMLP)
    assert all(isinstance(a, nn.ReLU) for a in net.activations)
    assert all(len(torch.unique(w)) == 3 for w in net.hidden_weights())  # {-a, 0, +a}
    assert net.centers[0].item() == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-6)  # ReLU's Gaussian mean
    assert cb.residuals == []
    assert lc.module.evaluate_accuracy(net, ordered_loaders()[0]) > 0.8


def test_ntk_staircase_activations_have_three_rising_levels(tmp_path: Path) -> None:
    model, cb = _rf_fit(tmp_path, activations="staircase", epochs=1)
    net = model.backbone
    assert isinstance(net, RandomFeatureMLP)
    for act in net.activations:
        assert isinstance(act, StepActivation)
        levels = act(torch.linspace(-5, 5, 1001)).unique()
        assert len(levels) == 3
        assert float(levels[0]) == 0.0
    assert len(cb.residuals) == 3


def test_ntk_learnable_activations_train_with_the_head_and_round_trip(tmp_path: Path) -> None:
    frozen, _ = _rf_fit(tmp_path / "frozen", activations="staircase", epochs=2)
    learned, _ = _rf_fit(tmp_path / "learned", activations="staircase", epochs=2, learnable=True)
    for net in (frozen.backbone, learned.backbone):
        assert isinstance(net, RandomFeatureMLP)
        assert all(not w.requires_grad for w in net.hidden_weights())  # the hidden weights stay frozen either way
    frozen_acts = [a for a in frozen.backbone.activations if isinstance(a, StepActivation)]
    learned_acts = [a for a in learned.backbone.activations if isinstance(a, StepActivation)]
    # same matching (same seed) at the start; only the learnable ones moved
    for f, g in zip(frozen_acts, learned_acts, strict=True):
        assert not f.amplitudes.requires_grad
        assert g.amplitudes.requires_grad
        assert not torch.allclose(f.amplitudes, g.amplitudes)
    path = lc.save(learned, tmp_path / "learned.lcz")
    loaded = lc.load(path, model=RandomFeatureMLP(16, [128, 128, 64], 4))
    x = torch.randn(32, 16)
    learned.backbone.eval()
    assert torch.equal(loaded(x), learned.backbone(x))


class _FirstStepUpdates(pl.Callback):
    """How far the first optimizer step moved the head and the step activations' amplitudes."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        if trainer.global_step == 0:
            self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        if trainer.global_step == 1:
            after = dict(pl_module.named_parameters())
            self.moved = {n: float((after[n].detach() - b).abs().max()) for n, b in self.before.items()}


def test_activation_lr_scale_slows_the_activations_only(tmp_path: Path) -> None:
    """Adam's first step moves every parameter by about its lr: 0.1 for the head, 0.1 x scale for the activations."""
    updates = {}
    for scale in (1.0, 0.01):
        model = lc.ImageClassifier(
            RandomFeatureMLP(16, [128, 128, 64], 4), num_classes=4, optimizer=partial(torch.optim.Adam, lr=0.1)
        )
        probe = _FirstStepUpdates()
        cb = lc.Ternarization(
            mode="ntk",
            sparsity=0.5,
            restarts=10,
            ntk_activations="staircase",
            ntk_learnable_activations=True,
            activation_lr_scale=scale,
        )
        train, val = ordered_loaders()
        pl.Trainer(callbacks=[cb, probe], **trainer_kwargs(tmp_path / str(scale), max_epochs=1)).fit(model, train, val)
        updates[scale] = probe.moved
    for scale, moved in updates.items():
        assert moved["backbone.head.weight"] == pytest.approx(0.1, rel=1e-3)
        amplitude_moves = [v for n, v in moved.items() if n.endswith("amplitudes")]
        assert len(amplitude_moves) == 3
        assert max(amplitude_moves) == pytest.approx(0.1 * scale, rel=1e-3)
    assert lc.param_groups(model)[1]["lr_scale"] == 0.01  # the scale stays on the modules after fit


class _PlainAdamClassifier(pl.LightningModule):
    """A user's own module whose optimizer ignores param groups."""

    def __init__(self) -> None:
        super().__init__()
        self.net = RandomFeatureMLP(16, [32, 32, 16], 4)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=0.01)


def test_activation_lr_scale_warns_when_the_optimizer_ignores_it(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"activation_lr_scale=0\.1.*param_groups"):
        _rf_fit(tmp_path, epochs=1, learnable=True, activation_lr_scale=0.1, model=_PlainAdamClassifier())


@pytest.mark.parametrize("storage", ["symbols", "seed"])
def test_ntk_artifact_round_trip_is_exact(tmp_path: Path, storage: str) -> None:
    model, cb = _rf_fit(tmp_path, storage=storage, epochs=1)
    path = lc.save(model, tmp_path / "rf.lcz")
    assert path.stat().st_size == cb.summary()[f"ternary/artifact_bytes_{storage}"]
    records = {r.name: r for r in lc.read_artifact(path).tensors}
    assert records["hidden.0.weight"].meta["coding"] == ("seed" if storage == "seed" else "ans")
    loaded = lc.load(path, model=RandomFeatureMLP(16, [128, 128, 64], 4))
    x = torch.randn(32, 16)
    model.backbone.eval()
    assert torch.equal(loaded(x), model.backbone(x))


def test_seed_storage_refuses_a_tensor_the_seed_does_not_produce() -> None:
    w = sparse_ternary((10, 10), 0.5, seed=1)
    with pytest.raises(ValueError, match="not sparse_ternary"):
        get_codec("ternary").encode(w, seed=2, sparsity=0.5)


def test_ntk_mode_needs_a_random_feature_mlp(tmp_path: Path) -> None:
    train, val = ordered_loaders()
    trainer = pl.Trainer(callbacks=[lc.Ternarization(mode="ntk")], **trainer_kwargs(tmp_path, max_epochs=1))
    with pytest.raises(TypeError, match="RandomFeatureMLP"):
        trainer.fit(_classifier(mlp()), train, val)


def test_invalid_arguments() -> None:
    cases = [
        ({"mode": "ptq"}, "`mode`"),
        ({"rule": "median"}, "`rule`"),
        ({"rule": "sparsity"}, "`sparsity`"),
        ({"sparsity": 1.0}, "`sparsity`"),
        ({"layers": "fc1"}, "`layers`"),
        ({"first_layer": "int8"}, "`first_layer`"),
        ({"last_layer": None}, "`last_layer`"),
        ({"activations": "relu"}, "`activations`"),
        ({"calibration_batches": 0}, "`calibration_batches`"),
        ({"restarts": 0}, "`restarts`"),
        ({"seed": -1}, "`seed`"),
        ({"storage": "disk"}, "`storage`"),
        ({"ntk_activations": "relu"}, "`ntk_activations`"),
        ({"ntk_learnable_activations": "yes"}, "`ntk_learnable_activations`"),
        ({"activation_lr_scale": 0.0}, "`activation_lr_scale`"),
        ({"activation_lr_scale": "fast"}, "`activation_lr_scale`"),
        ({"activation_lr_scale": 0.1}, "`activation_lr_scale` applies to learnable"),  # qat without activations
        ({"mode": "ntk", "activation_lr_scale": 0.1}, "`activation_lr_scale` applies to learnable"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            lc.Ternarization(**kwargs)  # type: ignore[arg-type]


def test_unknown_layer_names_are_refused(tmp_path: Path) -> None:
    train, val = ordered_loaders()
    trainer = pl.Trainer(callbacks=[lc.Ternarization(layers=["fc9"])], **trainer_kwargs(tmp_path, max_epochs=1))
    with pytest.raises(ValueError, match="`layers` names"):
        trainer.fit(_classifier(mlp()), train, val)


@pytest.mark.parametrize("shape", [(30, 20), (8, 3, 5, 5), (17,)])
@pytest.mark.parametrize(("rule", "sparsity"), [("twn", None), ("sparsity", 0.6)])
@pytest.mark.parametrize("per_channel", [True, False])
def test_fast_ternary_values_are_ternarize_bit_for_bit(
    shape: tuple[int, ...], rule: str, sparsity: float | None, per_channel: bool
) -> None:
    """QAT's forward pass (float masks) gives exactly the values the artifact stores (int8 symbols x scale)."""
    torch.manual_seed(len(shape))
    w = torch.randn(shape) ** 3
    w[0] = 0.0  # an all-zero channel keeps scale 0
    expected = ternarize(w, rule=rule, sparsity=sparsity, per_channel=per_channel).values()
    assert torch.equal(ternary_values(w, rule=rule, sparsity=sparsity, per_channel=per_channel), expected)
