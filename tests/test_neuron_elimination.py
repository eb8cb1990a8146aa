"""NeuronElimination: dependence, redistribution, layer pairs, annealing, removal, resume, DDP, artifact."""

from __future__ import annotations

import copy
from dataclasses import replace
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

import lightning_compress as lc
from lightning_compress.functional.neuron_elimination import (
    ActivationMoments,
    DependenceSolver,
    Elimination,
    LayerPair,
    RoundRecord,
    anneal_tolerance,
    collect_moments,
    consumer_rows,
    eliminate_dependent,
    find_layer_pairs,
    greedy_round,
    leading_share,
    param_count,
    param_table,
    replay_,
)
from tests.helpers.guards import RefuseFirstEvents
from tests.helpers.models import CrashAtEpoch, blobs, mlp, run_ddp_check, trainer_kwargs


# -- dependence ------------------------------------------------------------------------------------------------------
def test_scores_and_coefficients_match_least_squares() -> None:
    """1 - R^2 and the coefficients from the inverse covariance equal an explicit least-squares fit per neuron."""
    g = torch.Generator().manual_seed(0)
    a = torch.relu(
        torch.randn(2000, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    )
    moments = ActivationMoments(6)
    moments.update(a)
    solver = DependenceSolver(moments.mean(), moments.second_moment(), intercept=True, ridge=0.0)
    for j in range(6):
        others = [k for k in range(6) if k != j]
        design = torch.cat([a[:, others], torch.ones(2000, 1, dtype=torch.float64)], dim=1)
        solution = torch.linalg.lstsq(design, a[:, j : j + 1]).solution.squeeze(1)
        residual = a[:, j] - design @ solution
        expected_score = float(residual.pow(2).mean() / a[:, j].var(unbiased=False))
        assert float(solver.scores()[j]) == pytest.approx(expected_score, rel=1e-8)
    score, position = solver.best()
    elimination = solver.eliminate(position)
    others = [k for k in range(6) if k != position]
    design = torch.cat([a[:, others], torch.ones(2000, 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, a[:, position : position + 1]).solution.squeeze(1)
    assert torch.allclose(elimination.coefficients, solution[:-1], atol=1e-8)
    assert elimination.intercept == pytest.approx(float(solution[-1]), abs=1e-8)
    assert elimination.score == pytest.approx(score)


def test_downdated_inverse_equals_fresh_inverse() -> None:
    """After eliminations the Schur-downdated inverse equals the inverse of the survivors' covariance."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(5000, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    moments = ActivationMoments(8)
    moments.update(a)
    solver = DependenceSolver(moments.mean(), moments.second_moment(), intercept=True, ridge=1e-10)
    for _ in range(3):
        solver.eliminate(solver.best()[1])
    fresh = DependenceSolver(moments.mean(), moments.second_moment(), intercept=True, ridge=1e-10, alive=solver.alive)
    assert torch.allclose(solver.inverse, fresh.inverse, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("intercept", [True, False])
def test_dead_neurons_are_downdated_without_re_inverting(intercept: bool) -> None:
    """A dead neuron's elimination is a plain downdate (no re-inversion), and the inverse still equals a fresh one."""
    g = torch.Generator().manual_seed(4)
    mixing = torch.randn(12, 12, generator=g, dtype=torch.float64)
    live = torch.randn(3000, 12, generator=g, dtype=torch.float64) @ mixing
    dead = torch.full((3000, 5), 0.0 if not intercept else 1.5, dtype=torch.float64)  # constant (or zero) outputs
    acts = torch.cat([live[:, :6], dead, live[:, 6:]], dim=1)
    moments = ActivationMoments(17)
    moments.update(acts)
    solver = DependenceSolver(moments.mean(), moments.second_moment(), intercept=intercept, ridge=1e-10)
    inversions = []
    invert = solver._invert
    solver._invert = lambda gram=None: (inversions.append(1), invert(gram))[1]  # type: ignore[method-assign]
    for _ in range(5):
        score, position = solver.best()
        assert score == 0.0  # the dead ones go first
        assert 6 <= solver.alive[position] < 11
        solver.eliminate(position)
    assert not inversions
    downdated = solver.inverse
    invert()  # what a re-inversion after each of them gave: the survivors' ridged Gram matrix, inverted
    assert torch.allclose(downdated, solver.inverse, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("intercept", [True, False])
def test_solver_in_the_moments_memory_decides_bit_for_bit_as_on_a_copy(intercept: bool) -> None:
    """``take_second_moment`` + ``overwrite=True`` (the Gram matrix built in the moments' memory, kept packed)
    eliminates the same neurons with the same coefficients, to the bit, as a solver on a copy; near-exact
    eliminations (re-inversions from the packed Gram matrix) included. Without ``overwrite`` the input is untouched."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4000, 30, generator=g)
    noise = 1e-5 * torch.randn(4000, 10, generator=g)
    acts = torch.cat([a, a[:, :10] * 2 + a[:, 10:20] + noise, torch.zeros(4000, 2)], dim=1)  # near-exact, dead
    weight = torch.randn(42, 5, generator=g)

    def decide(overwrite: bool, alive: list[int] | None) -> list[tuple[int, torch.Tensor, torch.Tensor, float]]:
        moments = ActivationMoments(42)
        moments.update(acts)
        second = moments.take_second_moment() if overwrite else moments.second_moment()
        before = second.clone()
        solver = DependenceSolver(
            moments.mean(), second, intercept=intercept, alive=alive, consumer_weight=weight, overwrite=overwrite
        )
        if not overwrite:
            assert torch.equal(second, before)
        else:
            assert moments.outer.numel() == 0  # handed over
        (record,) = greedy_round([solver], 1e-3, min_neurons=5)
        return [(e.neuron, e.survivors, e.coefficients, e.score) for e in record.eliminations]

    for alive in (None, [i for i in range(42) if i != 3]):
        copied, in_place = decide(False, alive), decide(True, alive)
        assert len(copied) >= 10
        for (n1, s1, c1, r1), (n2, s2, c2, r2) in zip(copied, in_place, strict=True):
            assert (n1, r1) == (n2, r2)
            assert torch.equal(s1, s2)
            assert torch.equal(c1, c2)


def test_too_few_rows_every_neuron_looks_dependent_and_is_refused() -> None:
    """The rank artefact: with fewer rows than neurons the scores collapse, so the post-hoc API refuses."""
    net = mlp(hidden=64)
    x = torch.randn(32, 16)
    moments = collect_moments(net, find_layer_pairs(net, x)[0], [x])
    solver = DependenceSolver(moments[0].mean(), moments[0].second_moment(), intercept=True)
    assert float(solver.scores().max()) < 1e-6  # every neuron "explained" by the others
    with pytest.raises(ValueError, match="min_rows_per_neuron"):
        eliminate_dependent(net, [x], tolerance=1e-8)


def test_consumer_rows_layouts() -> None:
    x = torch.arange(24.0).reshape(2, 3, 2, 2)
    rows = consumer_rows(x, 3)
    assert rows.shape == (8, 3)
    assert rows[0].tolist() == [0.0, 4.0, 8.0]
    flat = consumer_rows(x.flatten(1), 3)  # a Linear after a flatten sees the same rows
    assert torch.equal(rows, flat)


def test_anneal_schedules_start_and_end() -> None:
    for schedule in ("geometric", "linear", "cosine"):
        values = anneal_tolerance(1e-6, 0.1, 6, schedule)
        assert values[0] == pytest.approx(1e-6)
        assert values[-1] == pytest.approx(0.1)
        assert values == sorted(values)
    with pytest.raises(ValueError, match="schedule"):
        anneal_tolerance(1e-6, 0.1, 3, "step")


# -- exact redundancy: lossless ----------------------------------------------------------------------------------------
def _mlp_with_dependent_neurons() -> tuple[nn.Sequential, dict[str, list[set[int]]]]:
    """MLP whose hidden layers contain exact positive multiples and sums of other neurons.

    Layer 1: neuron 7 = 2.5 x neuron 2, neuron 9 = 0.5 x neuron 4. Layer 2 (non-negative inputs; rows 0, 1, 3
    have non-negative weights and biases so ReLU is the identity there): neuron 5 = neuron 0 + neuron 1 and neuron
    6 = 3 x neuron 3. Returns the net and, per layer, the groups of which exactly one member must go.
    """
    torch.manual_seed(0)
    net = mlp(dim=16, hidden=12, classes=4)
    with torch.no_grad():
        first = net[0]
        first.weight[7], first.bias[7] = 2.5 * first.weight[2], 2.5 * first.bias[2]
        first.weight[9], first.bias[9] = 0.5 * first.weight[4], 0.5 * first.bias[4]
        second = net[2]
        for row in (0, 1, 3):
            second.weight[row].abs_()
            second.bias[row].abs_()
        second.weight[5], second.bias[5] = second.weight[0] + second.weight[1], second.bias[0] + second.bias[1]
        second.weight[6], second.bias[6] = 3 * second.weight[3], 3 * second.bias[3]
    return net, {"0": [{2, 7}, {4, 9}], "2": [{0, 1, 5}, {3, 6}]}


def test_mlp_exact_multiples_and_sums_removed_losslessly() -> None:
    net, groups = _mlp_with_dependent_neurons()
    reference = copy.deepcopy(net)
    calibration = [torch.randn(256, 16, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    records = eliminate_dependent(net, calibration, tolerance=1e-8)
    pairs, _ = find_layer_pairs(reference, calibration[0][:2])
    for record in records:
        removed = {e.neuron for e in record.eliminations}
        expected = groups[pairs[record.pair].producer]
        assert len(removed) == len(expected)
        assert all(len(removed & group) == 1 for group in expected)
    assert (net[0].out_features, net[2].in_features, net[2].out_features, net[4].in_features) == (10, 10, 10, 10)
    fresh = torch.randn(512, 16, generator=torch.Generator().manual_seed(99)) * 3
    with torch.no_grad():
        assert float((net(fresh) - reference(fresh)).abs().max()) <= 1e-5


def test_replay_on_a_fresh_copy_gives_the_same_weights() -> None:
    net, _ = _mlp_with_dependent_neurons()
    original = copy.deepcopy(net)
    calibration = [torch.randn(512, 16, generator=torch.Generator().manual_seed(3))]
    records = eliminate_dependent(net, calibration, tolerance=0.05)
    plain = [RoundRecord.from_dict(r.to_dict()) for r in records]  # through plain data, as in a checkpoint
    pairs, _ = find_layer_pairs(original, calibration[0][:2])
    replay_(original, pairs, plain)
    for (name, a), (_, b) in zip(net.state_dict().items(), original.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_cnn_duplicated_channels_removed_losslessly() -> None:
    """Conv -> conv (padded: no intercept) and conv -> flatten -> linear, with duplicated and scaled channels."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    )
    with torch.no_grad():
        bn = net[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        net[0].weight[5], net[0].bias[5] = net[0].weight[2], net[0].bias[2]  # channel 5 duplicates channel 2
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, attr)[5] = getattr(bn, attr)[2]
        net[3].weight[4], net[3].bias[4] = 2 * net[3].weight[1], 2 * net[3].bias[1]  # channel 4 = 2 x channel 1
    net.eval()
    reference = copy.deepcopy(net)
    calibration = [torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    records = eliminate_dependent(net, calibration, tolerance=1e-8)
    removed = [{e.neuron for e in r.eliminations} for r in records]
    assert len(removed[0]) == 1
    assert removed[0] <= {2, 5}
    assert len(removed[1]) == 1
    assert removed[1] <= {1, 4}
    assert (net[0].out_channels, net[1].num_features, net[3].in_channels) == (7, 7, 7)
    assert (net[3].out_channels, net[7].in_features) == (5, 5 * 16)
    fresh = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert float((net(fresh) - reference(fresh)).abs().max()) <= 1e-5


def test_resnet18_pairs_leave_residual_channels_alone() -> None:
    net = torchvision.models.resnet18(num_classes=10).eval()
    pairs, skipped = find_layer_pairs(net, torch.randn(2, 3, 32, 32))
    assert [p.producer for p in pairs] == [f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)]
    assert all(p.norms == (p.producer.replace("conv1", "bn1"),) and not p.intercept for p in pairs)
    assert "residual" in skipped["layer1.0.conv2"]
    assert "residual" in skipped["conv1"]
    x = torch.randn(16, 3, 32, 32)
    blocks = ["layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1"]  # deeper ones have too few rows at 32x32
    records = eliminate_dependent(net, [x], tolerance=0.2, layers=blocks, min_rows_per_neuron=2)
    assert sum(len(r.eliminations) for r in records) > 0
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # still a valid residual network
    assert net.layer1[0].conv2.out_channels == 64  # block outputs untouched


def test_layers_argument_names_invalid_layers() -> None:
    net = mlp()
    with pytest.raises(ValueError, match="do not exist"):
        find_layer_pairs(net, torch.randn(2, 16), ["nope"])
    with pytest.raises(ValueError, match="output layer"):
        find_layer_pairs(net, torch.randn(2, 16), ["4"])
    pairs, _ = find_layer_pairs(net, torch.randn(2, 16), ["2"])
    assert [p.producer for p in pairs] == ["2"]


def test_greedy_round_follows_size_goal_and_floor() -> None:
    net = mlp(hidden=20)
    x = torch.randn(2000, 16)
    pairs, _ = find_layer_pairs(net, x[:2])
    moments = collect_moments(net, pairs, [x])
    table = param_table(net, pairs)
    solvers = [DependenceSolver(m.mean(), m.second_moment(), intercept=True) for m in moments]
    total = param_count(table, pairs, [20, 20])
    assert total == sum(p.numel() for p in net.parameters())
    records = greedy_round(
        solvers,
        1e-9,
        count_params=lambda counts: param_count(table, pairs, counts),
        params_goal=total // 2,
        params_floor=total // 3,
    )
    remaining = param_count(table, pairs, [len(s.alive) for s in solvers])
    assert total // 3 < remaining <= total // 2
    assert sum(len(r.eliminations) for r in records) > 0


# -- callback ----------------------------------------------------------------------------------------------------------
def _big_loaders() -> tuple[DataLoader, DataLoader]:
    return DataLoader(blobs(1024), batch_size=64), DataLoader(blobs(256, sample_seed=7), batch_size=128)


def _fit(
    tmp_path: Path, callback: pl.Callback, epochs: int = 3, hidden: int = 24, **kwargs: object
) -> lc.ImageClassifier:
    torch.manual_seed(0)
    model = lc.ImageClassifier(mlp(hidden=hidden), num_classes=4, optimizer=partial(torch.optim.Adam, lr=0.01))
    train, val = _big_loaders()
    callbacks = [callback, *kwargs.pop("callbacks", [])]  # type: ignore[misc]
    ckpt_path = kwargs.pop("ckpt_path", None)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=epochs, **kwargs), callbacks=callbacks)
    trainer.fit(model, train, val, ckpt_path=ckpt_path)  # type: ignore[arg-type]
    return model


def test_callback_shrinks_to_target_and_artifact_is_smaller(tmp_path: Path) -> None:
    callback = lc.NeuronElimination(rounds=4, target_params=0.4, verbose=False)
    model = _fit(tmp_path, callback)
    backbone = model.backbone
    params = sum(p.numel() for p in backbone.parameters())
    assert params <= 0.4 * callback._dense_params
    assert backbone[0].out_features == backbone[2].in_features < 24
    widths = [int(callback.summary()[f"neuron_elimination/neurons/{n}"]) for n in ("0", "2")]
    assert widths == [backbone[0].out_features, backbone[2].out_features]
    path = lc.save(model, tmp_path / "m.lcz")
    loaded = lc.load(path, mlp(hidden=24))
    x = torch.randn(32, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), backbone(x))
    report = lc.size_report(path)
    assert report.stored_fp32_bytes is not None
    assert report.stored_fp32_bytes < report.fp32_bytes
    assert report.fp32_bytes == 4 * callback._dense_params  # the ratio is against the original model


def test_history_keeps_neurons_and_scores_and_reads_full_records(tmp_path: Path) -> None:
    """The callback keeps 12 bytes per eliminated neuron (the weights carry the redistribution), not the regression.

    A checkpoint of an earlier version, whose history holds survivors and coefficients, loads into the same removals.
    """
    callback = lc.NeuronElimination(rounds=4, target_params=0.4, verbose=False)
    model = _fit(tmp_path, callback)
    records = [record for entry in callback.history for record in entry["records"]]
    eliminated = sum(len(record["neurons"]) for record in records)
    assert eliminated == 24 - model.backbone[0].out_features + 24 - model.backbone[2].out_features > 0
    assert all(set(record) == {"pair", "neurons", "scores"} for record in records)
    assert sum(record["neurons"].nbytes + record["scores"].nbytes for record in records) == 12 * eliminated
    legacy = callback.state_dict()
    for entry in legacy["history"]:
        entry["records"] = [
            {
                "pair": record["pair"],
                "eliminations": [
                    {
                        "neuron": n,
                        "survivors": torch.arange(3),
                        "coefficients": torch.ones(3),
                        "intercept": 0.0,
                        "score": s,
                    }
                    for n, s in zip(record["neurons"].tolist(), record["scores"].tolist(), strict=True)
                ],
            }
            for record in entry["records"]
        ]
    restored = lc.NeuronElimination(verbose=False)
    restored.load_state_dict(legacy)
    assert restored.removed() == callback.removed()
    assert [len(alive) for alive in restored.alive()] == [
        model.backbone[0].out_features,
        model.backbone[2].out_features,
    ]


def test_callback_lossless_on_exact_redundancy(tmp_path: Path) -> None:
    """With lr 0 and a tolerance near 0 the callback removes only the planted dependents; outputs unchanged."""
    net, _groups = _mlp_with_dependent_neurons()
    reference = copy.deepcopy(net)
    model = lc.ImageClassifier(net, num_classes=4, optimizer=partial(torch.optim.SGD, lr=0.0))
    callback = lc.NeuronElimination(rounds=1, tolerance=1e-8, start_tolerance=1e-8, verbose=False)
    train, val = _big_loaders()
    pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1), callbacks=[callback]).fit(model, train, val)
    assert (net[0].out_features, net[2].out_features) == (10, 10)
    fresh = torch.randn(256, 16) * 2
    with torch.no_grad():
        assert float((net(fresh) - reference(fresh)).abs().max()) <= 1e-5


def test_post_hoc_short_fit_on_a_trained_model(tmp_path: Path) -> None:
    """Train dense first, then a one-epoch fit with the callback eliminates and fine-tunes the trained model."""
    torch.manual_seed(0)
    model = lc.ImageClassifier(mlp(hidden=24), num_classes=4, optimizer=partial(torch.optim.Adam, lr=0.01))
    train, val = _big_loaders()
    pl.Trainer(**trainer_kwargs(tmp_path / "dense", max_epochs=3)).fit(model, train, val)
    callback = lc.NeuronElimination(rounds=2, target_params=0.5, final_fraction=0.5, verbose=False)
    pl.Trainer(**trainer_kwargs(tmp_path / "post", max_epochs=1), callbacks=[callback]).fit(model, train, val)
    assert len(callback.history) == 2
    assert sum(p.numel() for p in model.backbone.parameters()) <= 0.5 * callback._dense_params
    assert lc.module.evaluate_accuracy(model, val) > 0.9


def test_masks_keep_removed_neurons_zero_during_training(tmp_path: Path) -> None:
    seen: list[float] = []

    class Probe(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
            if callback.removed()[0]:
                seen.append(float(pl_module.backbone[2].weight[:, callback.removed()[0]].abs().sum()))

    callback = lc.NeuronElimination(rounds=3, target_params=0.5, verbose=False)
    _fit(tmp_path, callback, callbacks=[Probe()])
    assert seen
    assert max(seen) == 0.0


def test_accuracy_budget_undoes_a_round_and_stops(tmp_path: Path) -> None:
    callback = lc.NeuronElimination(
        rounds=3,
        target_params=0.02,
        accuracy_budget=0.0,
        monitor="val/acc",
        guard="validation",
        min_layer_fraction=0.0,
        verbose=False,
    )
    model = _fit(tmp_path, callback, epochs=4, hidden=24)
    assert callback.guard.best is not None
    assert callback.guard.best > 0.8  # the watched metric is well above chance (0.25)
    assert callback._stopped
    assert callback.summary().get("neuron_elimination/undone_rounds", 0) >= 1
    assert sum(p.numel() for p in model.backbone.parameters()) > 0.02 * callback._dense_params


def _val_accuracy(model: lc.ImageClassifier) -> float:
    model.eval()
    with torch.no_grad():
        hits = [(model(x).argmax(1) == y).float() for x, y in _big_loaders()[1]]
    return float(torch.cat(hits).mean())


def test_default_event_guard_judges_every_round_and_eliminates(tmp_path: Path) -> None:
    callback = lc.NeuronElimination(rounds=4, verbose=False)
    assert callback.event_guard is not None  # the default guard judges each round by its own cost
    model = _fit(tmp_path, callback, hidden=48)
    assert _val_accuracy(model) > 0.8  # the judged measure is well above chance (0.25)
    costs = [entry["figures"]["round_cost"] for entry in callback.history]
    assert costs
    assert len(costs) == len(callback.history)  # every round was judged
    assert sum(costs) <= callback.event_guard.budget
    assert sum(p.numel() for p in model.backbone.parameters()) < 0.9 * callback._dense_params  # it compressed


def test_a_refused_round_is_skipped_and_a_later_one_eliminates(tmp_path: Path) -> None:
    """No share of the first round fits: it is skipped, not the end of annealing; later rounds eliminate (#35)."""
    callback = lc.NeuronElimination(rounds=4, verbose=False)
    assert callback.event_guard is not None
    RefuseFirstEvents(callback.event_guard, count=1).install()
    model = _fit(tmp_path, callback, hidden=48)
    assert _val_accuracy(model) > 0.8  # the judged measure is well above chance (0.25)
    assert callback.event_guard.refusals == 1
    assert not callback._stopped
    assert sum(p.numel() for p in model.backbone.parameters()) < 0.9 * callback._dense_params  # it compressed


def test_rounds_due_while_the_model_is_at_chance_are_deferred_not_judged(tmp_path: Path) -> None:
    """A model that answers one class for everything cannot be judged (no change moves its top-1): its rounds wait
    for a model that learned; this one never learns (learning rate 0), so nothing is judged or eliminated (#35)."""
    torch.manual_seed(0)
    model = lc.ImageClassifier(mlp(hidden=48), num_classes=4, optimizer=partial(torch.optim.SGD, lr=0.0))
    with torch.no_grad():  # the head answers class 0 for every input: the commonest class's share at best
        model.backbone[-1].weight.zero_()
        model.backbone[-1].bias.zero_()
    # a tolerance (with its budget given, the event guard still judges) that eliminates in the very first round
    callback = lc.NeuronElimination(rounds=4, start_tolerance=0.3, tolerance=0.5, accuracy_budget=0.01, verbose=False)
    assert callback.event_guard is not None
    train, val = _big_loaders()
    pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_epochs=2)).fit(model, train, val)
    assert callback.removed() == [[] for _ in callback.pairs]  # nothing was judged, so nothing eliminated
    assert callback.event_guard.deferrals >= 1
    assert "deferred while the model was at chance" in callback._stop_reason


def test_guarded_rounds_stay_within_the_event_budget(tmp_path: Path) -> None:
    """Rounds that would take the events past their budget are merged into later ones, or the neurons held."""
    from lightning_compress.callbacks.events import EventBudget

    callback = lc.NeuronElimination(rounds=8, verbose=False)
    callback.event_budget = EventBudget(steps=2, fraction=0.0, min_seconds=0.0)  # a round costs more than 2 steps
    _fit(tmp_path, callback, hidden=48)
    assert 1 <= callback.event_counts["round"] < 8  # some rounds ran, not all
    if callback._stopped and callback.event_counts["round"] < 8:
        assert "budget" in callback._stop_reason or "target" in callback._stop_reason


def test_a_budget_for_few_rounds_keeps_the_last_ones() -> None:
    """Where the budget takes 4 of 8 rounds, the last 4 run (a later round does what an earlier one would, and more);
    spread, they would run every other one, the first of them at a tolerance that removes almost nothing."""
    from lightning_compress.callbacks.events import EventBudget

    budget = EventBudget(steps=100, min_seconds=0.0)
    for _ in range(3):
        budget.step_started()
        budget.step_ended(seconds=2.0)  # 200 s of budget; 100 spent, 25 s a round with its margin: 4 affordable
    last = [budget.decide(100.0, 20.0, left, total_steps=16, latest=True) for left in range(8, 0, -1)]
    spread = [budget.decide(100.0, 20.0, left, total_steps=16) for left in range(8, 0, -1)]
    assert last == ["skip"] * 4 + ["run"] * 4
    assert spread[:4] == ["skip", "run"] * 2  # spread: rounds run early (spent held here, so every late one fits)


def test_event_guard_backs_off_a_round_and_never_rewinds_training(tmp_path: Path) -> None:
    """A round over budget keeps its largest leading share within budget; global steps only ever advance."""
    steps: list[int] = []

    class Count(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
            steps.append(trainer.global_step)

    callback = lc.NeuronElimination(
        rounds=3, tolerance=0.5, accuracy_budget=0.02, min_layer_fraction=0.0, backoff_steps=6, verbose=False
    )
    assert callback.event_guard is not None  # a budget given with a tolerance: guarded by its own cost
    model = _fit(tmp_path, callback, epochs=4, hidden=48, callbacks=[Count()])
    assert _val_accuracy(model) > 0.8
    assert steps == sorted(steps)
    assert sum(entry["figures"]["round_cost"] for entry in callback.history) <= 0.02
    assert callback.removed() != [[] for _ in callback.pairs]  # something was eliminated
    assert callback._elimination_cap is not None or callback.event_guard.refusals  # a round backed off or refused
    path = lc.save(model, tmp_path / "held.lcz")
    assert lc.load(path, mlp(hidden=48)) is not None


def test_leading_share_keeps_each_pairs_first_eliminations() -> None:
    def record(pair: int, n: int) -> RoundRecord:
        e = Elimination(0, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64), 0.0, 0.0)
        return RoundRecord(pair, [replace(e, neuron=i) for i in range(n)])

    records = [record(0, 8), record(1, 2)]
    half = leading_share(records, 0.5)
    assert [[e.neuron for e in r.eliminations] for r in half] == [[0, 1, 2, 3], [0]]
    tiny = leading_share(records, 0.01)
    assert [len(r.eliminations) for r in tiny] == [1, 0]  # a share above 0 keeps at least one
    assert [len(r.eliminations) for r in leading_share(records, 0.0)] == [0, 0]


def test_immediate_removal_rebuilds_optimizer(tmp_path: Path) -> None:
    callback = lc.NeuronElimination(rounds=3, target_params=0.4, removal="immediate", verbose=False)
    model = _fit(tmp_path, callback)
    assert sum(p.numel() for p in model.backbone.parameters()) <= 0.4 * callback._dense_params
    assert model.trainer.optimizers[0].param_groups[0]["params"][0] is model.backbone[0].weight


@pytest.mark.parametrize("removal", ["mask", "immediate"])
def test_crash_and_resume_gives_identical_model(tmp_path: Path, removal: str) -> None:
    def run(root: Path, crash: bool, resume: str | None = None) -> lc.ImageClassifier:
        extra: list[pl.Callback] = [ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_epochs=1)]
        if crash:
            extra.append(CrashAtEpoch(2))
        return _fit(
            root,
            lc.NeuronElimination(rounds=4, target_params=0.4, removal=removal, verbose=False),
            epochs=4,
            callbacks=extra,
            enable_checkpointing=True,
            ckpt_path=resume,
        )

    straight = run(tmp_path / "a", crash=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "b", crash=True)
    resumed = run(tmp_path / "b", crash=False, resume=str(tmp_path / "b" / "ckpt" / "last.ckpt"))
    a, b = straight.backbone.state_dict(), resumed.backbone.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_ddp_two_processes_remove_the_same_neurons(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp_check("neuron_elimination", tmp_path)
    assert rank0["0.weight"].shape[0] < 32
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name


def test_spawn_strategy_is_refused_with_reason(tmp_path: Path) -> None:
    model = lc.ImageClassifier(mlp(), num_classes=4)
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, strategy="ddp_spawn", devices=1), callbacks=[lc.NeuronElimination()]
    )
    with pytest.raises(Exception, match="strategy='ddp'"):  # raised in the spawned process, re-raised here
        trainer.fit(model, *_big_loaders())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"tolerance": 1.5}, "tolerance"),
        ({"tolerance": "x"}, "tolerance"),
        ({"start_tolerance": 0.5}, "start_tolerance"),
        ({"start_tolerance": 0.0}, "start_tolerance"),
        ({"schedule": "step"}, "schedule"),
        ({"rounds": 0}, "rounds"),
        ({"rounds": 2.5}, "rounds"),
        ({"target_params": 1.0}, "target_params"),
        ({"accuracy_budget": -0.1}, "accuracy_budget"),
        ({"monitor": ""}, "monitor"),
        ({"mode": "up"}, "mode"),
        ({"layers": "fc1"}, "layers"),
        ({"calibration_batches": 0}, "calibration_batches"),
        ({"min_rows_per_neuron": 0}, "min_rows_per_neuron"),
        ({"min_neurons": 0}, "min_neurons"),
        ({"ridge": -1.0}, "ridge"),
        ({"removal": "now"}, "removal"),
        ({"final_fraction": 1.0}, "final_fraction"),
    ],
)
def test_invalid_arguments_are_named(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        lc.NeuronElimination(**kwargs)  # type: ignore[arg-type]


def test_unknown_layer_name_fails_at_fit_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not exist"):
        _fit(tmp_path, lc.NeuronElimination(layers=["fc9"]), epochs=1)


def test_layer_pair_round_trips_as_plain_data() -> None:
    pair = LayerPair("a", "b", ("bn",), 4, 2, False)
    assert LayerPair.from_dict(pair.to_dict()) == pair


def test_the_resize_hook_is_removed_from_the_users_module_after_the_fit(tmp_path: Path) -> None:
    """After fit, loading a state dict of other shapes into the user's module must fail, not silently reshape."""
    callback = lc.NeuronElimination(rounds=2, target_params=0.5, min_layer_fraction=0.0, verbose=False)
    model = _fit(tmp_path, callback, epochs=2, hidden=24)
    other = {k: torch.zeros(3, *v.shape[1:]) if v.dim() else v for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(other)
