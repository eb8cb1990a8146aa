from __future__ import annotations

import itertools
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import lightning_compress as lc
from lightning_compress.callbacks.events import spending
from lightning_compress.functional.weight_sharing import (
    SearchPoint,
    WeightSharingProblem,
    entropy_bits,
    huffman_average_length,
    kmeans_binning,
    merge_bins,
    nsga2_search,
    pareto_front,
    select_parameters,
    uniform_binning,
)
from tests.helpers.models import blobs, loaders, mlp, run_ddp_check, trainer_kwargs


def test_uniform_binning_matches_numpy_digitize() -> None:
    values = torch.randn(5000, dtype=torch.float64) ** 3
    for k in (2, 3, 17, 300):
        b = uniform_binning(values, k)
        edges = np.linspace(values.min().item(), values.max().item(), k)
        bins = np.digitize(values.numpy(), edges) - 1
        nonempty = np.unique(bins)
        expected = np.array([values.numpy()[bins == i].mean() for i in nonempty])
        assert b.num_shared == len(nonempty)
        np.testing.assert_allclose(b.codebook.numpy(), expected, rtol=1e-12)
        assert torch.all(b.codebook[1:] > b.codebook[:-1])
        np.testing.assert_allclose(
            b.values(torch.float64).numpy(), expected[np.searchsorted(nonempty, bins)], rtol=1e-12
        )


def test_chunked_float32_binning_equals_float64_digitize(monkeypatch: pytest.MonkeyPatch) -> None:
    """Binned in chunks and compared in float32 (edges rounded up), every value lands in its float64 bin."""
    import lightning_compress.functional.weight_sharing as ws

    monkeypatch.setattr(ws, "CHUNK", 1000)  # several chunks, one partial
    torch.manual_seed(0)
    values = (torch.randn(4321) ** 3).float()
    for k in (2, 7, 33, 300):
        low, high = float(values.min()), float(values.max())
        values[1 : k - 1] = ws.uniform_edges(low, high, k)[1:-1].float()  # values on the float32 roundings of edges
        # torch.linspace over the values' own range, the binning's definition (numpy's rounds otherwise)
        edges = ws.uniform_edges(float(values.min()), float(values.max()), k)
        bins = np.digitize(values.double().numpy(), edges.numpy()) - 1
        b = uniform_binning(values, k)
        assert b.indices.dtype == torch.int32
        nonempty = np.unique(bins)
        assert np.array_equal(b.indices.numpy(), np.searchsorted(nonempty, bins))
        assert np.array_equal(b.counts.numpy(), np.bincount(bins)[nonempty])


def test_merge_bins_keeps_exact_means() -> None:
    values = torch.randn(1000, dtype=torch.float64)
    b = uniform_binning(values, 10)
    m = merge_bins(b, 3)
    assert m.num_shared == b.num_shared - 1
    members = (b.indices == 3) | (b.indices == 4)
    assert torch.allclose(m.codebook[3], values[members].mean())
    assert torch.equal(m.values(torch.float64)[~members], b.values(torch.float64)[~members])
    with pytest.raises(ValueError, match="Cannot merge"):
        merge_bins(b, b.num_shared - 1)


def test_entropy_and_huffman() -> None:
    assert entropy_bits([1, 1, 1, 1]) == pytest.approx(2.0)
    assert huffman_average_length([1, 1, 1, 1]) == pytest.approx(2.0)
    assert huffman_average_length([8, 4, 2, 2]) == pytest.approx(1.75)  # lengths 1, 2, 3, 3
    counts = [50, 30, 10, 5, 5]
    assert entropy_bits(counts) <= huffman_average_length(counts) < entropy_bits(counts) + 1


def test_kmeans_baseline() -> None:
    values = torch.cat([torch.full((100,), -1.0), torch.full((100,), 2.0)]) + 0.01 * torch.randn(200)
    b = kmeans_binning(values, 2, seed=0)
    assert b.num_shared == 2
    assert torch.allclose(b.codebook, torch.tensor([-1.0, 2.0], dtype=torch.float64), atol=0.01)


def _tiny_problem() -> WeightSharingProblem:
    torch.manual_seed(0)
    model = mlp(hidden=24).eval()
    x, y = blobs(200, seed=3).tensors
    with torch.no_grad():  # make it a meaningful classifier: fit the last layer by least squares
        feats = model[:4](x)
        target = torch.nn.functional.one_hot(y, 4).float()
        model[4].weight.copy_(torch.linalg.lstsq(feats, target).solution.T)

    def error() -> float:
        with torch.no_grad():
            return 1.0 - float((model(x).argmax(1) == y).float().mean())

    return WeightSharingProblem([p for _, p in select_parameters(model)], error)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_nsga2_front_equals_exhaustive_front(seed: int) -> None:
    problem = _tiny_problem()
    k_bounds = (2, 40)
    exhaustive = pareto_front(problem.evaluate_k(k) for k in range(k_bounds[0], k_bounds[1] + 1))
    assert len(exhaustive) >= 3  # a non-trivial front
    fresh = _tiny_problem()
    nsga2_search(fresh.evaluate_k, k_bounds, pop_size=12, n_gen=30, seed=seed)
    found = pareto_front(fresh.cache.values())
    assert [(p.num_shared, p.error) for p in found] == [(p.num_shared, p.error) for p in exhaustive]
    # both objectives are minimised: the front trades fewer shared values for more error
    assert all(a.num_shared < b.num_shared and a.error > b.error for a, b in itertools.pairwise(found))


def test_replayed_merges_equal_merges_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Merges composed in a table and applied once, in place and in chunks: the same codebook (to the bit), indices
    and counts as merge_bins one step at a time."""
    import lightning_compress.functional.weight_sharing as ws

    monkeypatch.setattr(ws, "CHUNK", 1000)
    torch.manual_seed(3)
    values = torch.randn(4321) ** 3
    steps = [0, 0, 5, 3, 10, 2, 2]
    one_by_one = uniform_binning(values, 40)
    for i in steps:
        one_by_one = merge_bins(one_by_one, i)
    replayed = ws.replay_merges_(uniform_binning(values, 40), steps)
    assert torch.equal(replayed.codebook, one_by_one.codebook)
    assert torch.equal(replayed.indices, one_by_one.indices)
    assert torch.equal(replayed.counts, one_by_one.counts)
    assert replayed.indices.dtype == torch.int32
    with pytest.raises(ValueError, match="Cannot merge bins 99"):
        ws.replay_merges_(uniform_binning(values, 40), [99])


def test_merge_never_increases_validation_error() -> None:
    problem = _tiny_problem()
    for k in (6, 12, 30):
        unmerged = problem.evaluate_k(k)
        binning, error = problem.merge_until_no_improvement(k)
        assert binning.num_shared <= unmerged.num_shared
        assert error <= unmerged.error
        assert problem.error_of(binning) == error  # the reported error is that of the returned binning
        replayed = problem.merged(len(problem.merge_steps))  # the run is kept as its steps, and replays exactly
        assert torch.equal(replayed.codebook, binning.codebook)
        assert torch.equal(replayed.indices, binning.indices)
    problem.restore()
    assert all(torch.equal(p, o) for p, o in zip(problem.params, problem.original, strict=True))


def _merge_steps_one_by_one(problem: WeightSharingProblem, k: int) -> list[int]:
    """The merge run's rule applied with binnings built weight by weight (merge_bins) and written whole."""
    binning, best, steps, i = uniform_binning(problem.values, k), problem.evaluate_k(k).error, [], 1
    while i < binning.num_shared - 1:
        left, right = merge_bins(binning, i - 1), merge_bins(binning, i)
        e_left, e_right = problem.error_of(left), problem.error_of(right)
        if e_left <= best and e_left <= e_right:
            binning, best = left, e_left
            steps.append(i - 1)
        elif e_right <= best:
            binning, best = right, e_right
            steps.append(i)
        else:
            i += 1
    return steps


def test_merge_run_on_the_device_takes_the_per_weight_runs_steps() -> None:
    # The run updates a table over the unmerged bins; each step must score exactly what the binning built weight by
    # weight (merge_bins, Binning.values) would, so it takes the same steps.
    problem = _tiny_problem()
    for k in (6, 12, 30):
        problem.merge_until_no_improvement(k)
        assert problem.merge_steps == _merge_steps_one_by_one(problem, k)


def test_candidates_written_chunk_by_chunk_across_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a pruned support a candidate is written slice by slice into the tensors each slice covers (slices
    crossing tensor boundaries, an empty tensor): exactly the values of the binning written whole."""
    import lightning_compress.functional.weight_sharing as ws

    monkeypatch.setattr(ws, "CHUNK", 1000)
    torch.manual_seed(0)
    w = [torch.randn(37, 41) ** 3, torch.zeros(0), torch.randn(2500), torch.randn(3, 7)]
    problem = WeightSharingProblem(w, lambda: float(sum(t.sum() for t in w)))
    for k in (2, 9, 300):
        problem.evaluate_k(k)
        written = [t.clone() for t in w]
        problem.write(uniform_binning(problem.values, k))
        assert all(torch.equal(a, b) for a, b in zip(written, w, strict=True))
        # a merge step's candidate is written in slices too: the run scores what whole writes score
        problem.merge_until_no_improvement(k)
        assert problem.merge_steps == _merge_steps_one_by_one(problem, k)
    problem.restore()
    assert all(torch.equal(p, o) for p, o in zip(problem.params, problem.original, strict=True))


def test_codebook_of_the_search_equals_uniform_binning() -> None:
    """The search's codebook (chunked statistics, no indices kept) is uniform_binning's, for every k."""
    torch.manual_seed(0)
    w = [torch.randn(40, 30) ** 3, torch.zeros(7), torch.randn(5)]
    w[0][w[0].abs() < 0.05] = 0.0  # a pruned support, kept
    problem = WeightSharingProblem(w, lambda: 0.0, keep_zeros=[True, False, False])
    for k in (2, 3, 9, 64, 500):
        exact = uniform_binning(problem.values, k)
        codebook, counts = problem.uniform_codebook(k)
        torch.testing.assert_close(codebook, exact.codebook, rtol=1e-12, atol=1e-15)
        assert torch.equal(counts, exact.counts)
        problem.evaluate_k(k)  # writes bin by bin, in chunks ...
        fast = [t.clone() for t in w]
        problem.write(exact)  # ... the same values as the exact binning's
        assert all(torch.allclose(a, b, rtol=1e-6, atol=0) for a, b in zip(fast, w, strict=True))
        assert all(bool((t[o == 0] == 0).all()) for t, o in zip(w[:1], problem.original[:1], strict=True))


def test_screened_search_confirms_its_choice_on_all_validation_data(tmp_path: Path) -> None:
    """With a screen smaller than the validation data, only a few candidates run on all of it; the choice is judged
    there, within the budget."""
    ws = lc.WeightSharing(
        k_bounds=(2, 64), pop_size=8, n_gen=4, progress=False, accuracy_budget=0.02, screen_samples=48
    )
    _fit(tmp_path, ws)
    summary = ws.summary()
    assert summary["weight_sharing/baseline_metric"] > 0.8  # the dense net learned (chance: 0.25)
    assert ws.screen_used
    assert 0 < summary["weight_sharing/full_evaluations"] < summary["weight_sharing/evaluations"] / 2
    chosen = min(
        (p for p in ws.points if p.error <= 1 - summary["weight_sharing/baseline_metric"] + 0.02),
        key=lambda p: (p.num_shared, p.error),
    )
    assert summary["weight_sharing/num_shared"] == chosen.num_shared
    assert summary["weight_sharing/metric"] >= summary["weight_sharing/baseline_metric"] - 0.02  # on all 128 samples
    csv = (tmp_path / "weight_sharing_pareto.csv").read_text()
    assert ",screen," in csv
    assert ",validation," in csv


def test_pareto_front_rule() -> None:
    pts = [SearchPoint(2, 2, 0.5), SearchPoint(3, 3, 0.5), SearchPoint(8, 7, 0.1), SearchPoint(9, 7, 0.1)]
    assert [p.k for p in pareto_front(pts)] == [2, 8]


def _fit(tmp_path: Path, callback: lc.WeightSharing, **trainer_overrides: object) -> lc.ImageClassifier:
    torch.manual_seed(0)
    model = lc.ImageClassifier(mlp(), num_classes=4, optimizer=partial(torch.optim.Adam, lr=0.01))
    train, val = loaders()
    pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, **trainer_overrides)).fit(model, train, val)
    return model


def test_search_leaves_nothing_behind_without_the_cyclic_collector(tmp_path: Path) -> None:
    """With the cyclic collector off, nothing of the search outlives it: matplotlib's plot of the front leaves its
    frames in reference cycles that held the search's and ``share``'s frames (the problem's values, the chosen
    binning's indices: several model sizes) for the rest of the fit."""
    import gc

    from lightning_compress.functional.weight_sharing import Binning

    ws = lc.WeightSharing(k_bounds=(2, 32), pop_size=4, n_gen=2, progress=False, accuracy_budget=0.05)
    gc.collect()
    gc.disable()
    try:
        _fit(tmp_path, ws)
        alive = [o for o in gc.get_objects() if isinstance(o, WeightSharingProblem | Binning)]
    finally:
        gc.enable()
    assert list(tmp_path.rglob("*.png"))  # it did plot the front
    assert alive == []


def test_callback_shares_exactly_k_values_and_round_trips(tmp_path: Path) -> None:
    ws = lc.WeightSharing(k_bounds=(2, 64), pop_size=8, n_gen=4, progress=False, accuracy_budget=0.02)
    model = _fit(tmp_path, ws)
    summary = ws.summary()
    assert summary["weight_sharing/baseline_metric"] > 0.8  # the dense net learned (chance: 0.25)
    k_shared = int(summary["weight_sharing/num_shared"])
    values = torch.cat([p.detach().reshape(-1) for p in model.backbone.parameters()])
    assert len(torch.unique(values)) == k_shared
    assert summary["weight_sharing/metric"] >= summary["weight_sharing/baseline_metric"] - 0.02
    path = lc.save(model, tmp_path / "ws.lcz")
    records = lc.read_artifact(path).tensors
    assert {r.codec for r in records} == {"codebook"}
    loaded = lc.load(path, model=mlp())
    x = blobs(50, seed=9).tensors[0]
    assert torch.equal(loaded(x), model.backbone.eval()(x))
    report = lc.size_report(path)
    assert report.ratio > 32 / (summary["weight_sharing/entropy_bits"] + 2)
    rows = len(ws.screened) + sum(ws.screen_used or p.merged for p in ws.points)
    assert (tmp_path / "weight_sharing_pareto.csv").read_text().count("\n") == rows + 1
    assert (tmp_path / "weight_sharing_pareto.png").stat().st_size > 1000


def test_at_epoch_keeps_shared_values_while_training_the_rest(tmp_path: Path) -> None:
    ws = lc.WeightSharing(k_bounds=(2, 32), pop_size=6, n_gen=3, progress=False, at_epoch=0, parameters="weights")
    torch.manual_seed(0)
    model = lc.ImageClassifier(
        mlp(), num_classes=4, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-3)
    )
    train, val = loaders()
    biases_before: list[torch.Tensor] = []

    class Snapshot(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.current_epoch == 0:  # runs after WeightSharing (callback order)
                biases_before.extend(p.detach().clone() for n, p in model.backbone.named_parameters() if "bias" in n)

    pl.Trainer(callbacks=[ws, Snapshot()], **trainer_kwargs(tmp_path, max_epochs=3)).fit(model, train, val)
    weights = torch.cat([p.detach().reshape(-1) for n, p in model.backbone.named_parameters() if "weight" in n])
    assert len(torch.unique(weights)) == int(ws.summary()["weight_sharing/num_shared"])
    biases = [p.detach() for n, p in model.backbone.named_parameters() if "bias" in n]
    assert any(not torch.equal(a, b) for a, b in zip(biases, biases_before, strict=True))


def test_state_round_trip_and_resume(tmp_path: Path) -> None:
    ws = lc.WeightSharing(k_bounds=(2, 32), pop_size=6, n_gen=3, progress=False, at_epoch=0)
    model = _fit(tmp_path, ws, max_epochs=1, enable_checkpointing=True)
    state = ws.state_dict()
    assert state["done"] is True
    assert set(state) >= {"codebook", "counts", "names", "k", "num_shared"}
    ckpt = next(tmp_path.rglob("*.ckpt"))
    saved = torch.load(ckpt, weights_only=True)  # plain data only
    assert saved["callbacks"][ws.state_key]["codebook"] == state["codebook"]

    resumed = lc.WeightSharing(k_bounds=(2, 32), pop_size=6, n_gen=3, progress=False, at_epoch=0)
    torch.manual_seed(1)
    fresh = lc.ImageClassifier(mlp(), num_classes=4, optimizer=partial(torch.optim.Adam, lr=0.01))
    train, val = loaders()
    trainer = pl.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path / "r", max_epochs=2))
    trainer.fit(fresh, train, val, ckpt_path=ckpt, weights_only=True)
    assert resumed.done
    assert resumed.state_dict()["codebook"] == state["codebook"]
    path = lc.save(fresh, tmp_path / "r.lcz")  # the codec plan was re-attached on resume
    assert {r.codec for r in lc.read_artifact(path).tensors} == {"codebook"}
    values = torch.cat([p.detach().reshape(-1) for p in fresh.backbone.parameters()])
    assert set(values.tolist()) <= set(torch.tensor(state["codebook"]).tolist())
    del model


def test_invalid_arguments() -> None:
    cases = [
        ({"k_bounds": (1, 10)}, "`k_bounds`"),
        ({"k_bounds": (10, 5)}, "`k_bounds`"),
        ({"k_bounds": (2,)}, "`k_bounds`"),
        ({"pop_size": 1}, "`pop_size`"),
        ({"n_gen": 0}, "`n_gen`"),
        ({"merge_candidates": -1}, "`merge_candidates`"),
        ({"metric": "top5"}, "`metric`"),
        ({"accuracy_budget": 1.5}, "`accuracy_budget`"),
        ({"parameters": "biases"}, "`parameters`"),
        ({"at_epoch": -1}, "`at_epoch`"),
        ({"max_val_samples": 0}, "`max_val_samples`"),
        ({"search_budget": 2}, "`search_budget`"),
        ({"search_budget": "20"}, "`search_budget`"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            lc.WeightSharing(**kwargs)


def test_codebook_codec_errors() -> None:
    from lightning_compress.codec import get_codec

    codec = get_codec("codebook")
    with pytest.raises(ValueError, match="not in the codebook"):
        codec.encode(torch.tensor([0.1, 0.2]), codebook=[0.1, 0.3])
    with pytest.raises(ValueError, match="strictly increasing"):
        codec.encode(torch.tensor([0.1]), codebook=[0.3, 0.1])
    enc = codec.encode(torch.tensor([0.1, 0.3] * 500), codebook=[0.1, 0.3], counts=[500, 500])
    assert enc.meta["coding"] in ("shared", "own", "fixed")
    assert len(enc.payload) <= 1000 / 8 + 16  # about 1 bit per value for two equiprobable values


@pytest.mark.ddp
def test_ddp_ranks_share_identical_codebook(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp_check("weight_sharing", tmp_path)
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    values = torch.cat([v.reshape(-1) for k, v in rank0.items()])
    artifact = lc.read_artifact(tmp_path / "model.lcz")
    assert {r.codec for r in artifact.tensors} == {"codebook"}
    assert artifact.tensors[0].meta["k"] == len(torch.unique(values))


def test_pareto_front_goes_to_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a W&B logger the front is logged as a table and a scatter plot (W&B in disabled mode: no network)."""
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    logged: list[dict[str, object]] = []
    logger = WandbLogger(save_dir=str(tmp_path), mode="disabled")
    monkeypatch.setattr(type(logger.experiment), "log", lambda self, data, *a, **k: logged.append(data), raising=False)
    ws = lc.WeightSharing(k_bounds=(2, 32), pop_size=6, n_gen=2, progress=False)
    model = _model_for_wandb()
    train, val = loaders()
    pl.Trainer(callbacks=[ws], **trainer_kwargs(tmp_path, max_epochs=1, logger=logger)).fit(model, train, val)
    keys = {k for entry in logged for k in entry}
    assert {"weight_sharing/pareto", "weight_sharing/pareto_plot"} <= keys


def _model_for_wandb() -> lc.ImageClassifier:
    torch.manual_seed(0)
    return lc.ImageClassifier(mlp(), num_classes=4, optimizer=partial(torch.optim.Adam, lr=0.01))


def test_bounded_cache_counts_validation_passes_and_checks_the_choice_on_all_data(tmp_path: Path) -> None:
    """A cache smaller than the validation data: candidates are judged on it, the choice again on all of it
    (streamed), and the search's cost is stated in passes over the whole validation data."""
    ws = lc.WeightSharing(
        k_bounds=(2, 64), pop_size=8, n_gen=4, progress=False, accuracy_budget=0.02, max_val_samples=64
    )
    _fit(tmp_path, ws)
    summary = ws.summary()
    assert summary["weight_sharing/baseline_metric"] > 0.8  # the dense net learned (chance: 0.25)
    state = ws._state
    assert state["val_samples"] == 64
    assert state["val_samples_total"] == 128
    assert 0.8 < state["baseline_metric_all"] <= 1.0
    assert state["metric_all"] >= state["baseline_metric_all"] - 0.05
    # every evaluation ran 64 samples (half a pass), plus the two streamed passes over all 128
    assert state["validation_set_equivalents"] == pytest.approx(state["evaluations"] * 0.5 + 2 + 0.5)


@pytest.mark.parametrize("budget", [None, 6.0])
def test_search_spends_at_most_its_budget_on_a_batchnorm_net_with_random_labels(
    tmp_path: Path, budget: float | None
) -> None:
    """The forward passes of the search, counted on the model: at most ``search_budget`` passes over the cached
    validation samples, whatever the net (BatchNorm) and its accuracy (random labels: nothing to learn, every
    candidate as good as any); the same search unbounded spends more, so the bound is what stops it."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
    )
    train, val = blobs(256), blobs(128, sample_seed=5)
    shuffled = [
        torch.utils.data.TensorDataset(d.tensors[0], d.tensors[1][torch.randperm(len(d))]) for d in (train, val)
    ]
    samples = {"eval": 0, "on": False}

    def count(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if samples["on"] and not module.training:
            samples["eval"] += len(args[0])

    class LastEpoch(pl.Callback):  # before WeightSharing: from its end-of-fit search on, every forward is the search's
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            samples["on"] = trainer.current_epoch == trainer.max_epochs - 1

    net.register_forward_hook(count)
    ws = lc.WeightSharing(
        k_bounds=(2, 256), pop_size=16, n_gen=10, screen_samples=32, progress=False, search_budget=budget
    )
    model = lc.ImageClassifier(net, num_classes=4, optimizer=partial(torch.optim.Adam, lr=0.01))
    trainer = pl.Trainer(callbacks=[LastEpoch(), ws], **trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(
        model,
        torch.utils.data.DataLoader(shuffled[0], batch_size=32, shuffle=True),
        torch.utils.data.DataLoader(shuffled[1], batch_size=64),
    )
    passes = samples["eval"] / 128  # the 128 validation samples are all cached
    assert ws.summary()["weight_sharing/num_shared"] >= 1
    if budget is None:
        assert passes > 10  # unbounded, this search spends well over the budget below
    else:
        assert passes <= budget
        assert passes > budget / 2  # it searched, until the budget ended it


def test_progress_bar_shows_the_budget_spent_and_the_cost_of_a_pass() -> None:
    import time

    from lightning_compress.functional.weight_sharing import SearchBudget

    budget = SearchBudget(20.0, screen_cost=0.2)
    status = spending(budget, time.perf_counter() - 2.0)
    assert status() == ""  # nothing spent yet
    budget.charge(full=True)
    budget.charge(full=False)
    text = status()
    assert "1.2 of 20 passes" in text
    assert float(text.split(", ")[1].split(" s")[0]) == pytest.approx(2.0 / 1.2, rel=0.05)
    assert spending(None, 0.0)() == ""


def test_smallest_budget_without_a_screen_still_scores_a_candidate() -> None:
    # with every score a whole pass, 40% of the smallest budget (3) is less than the baseline and one candidate:
    # the exploration still gets one, and the search ends with a choice and the original values restored
    from lightning_compress.functional.weight_sharing import SearchBudget, choose_codebook

    w = torch.linspace(-1, 1, 101)
    original = w.clone()
    budget = SearchBudget(3.0)
    problem = WeightSharingProblem([w], lambda: float(w.abs().max() < 0.99), budget=budget)
    choice = choose_codebook(problem, lambda evaluate, k_max: [evaluate(k) for k in range(2, 12)], 0.0)
    assert budget.spent <= 3.0
    assert len(choice.screened) >= 1
    assert choice.search_ended is not None
    assert torch.equal(w, original)
