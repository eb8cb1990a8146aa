"""RateAware: the rate estimate against the codec, the byte target, composition, the guard, resume."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import lightning_compress as lc
from lightning_compress.functional.rate import add_rate_gradients, hard_bits, relaxed_bits, threshold_for_bits
from lightning_compress.module import evaluate_accuracy
from lightning_compress.representation import CompositionError
from tests.helpers.models import CrashAtEpoch, blobs, loaders, mlp, ordered_loaders, trainer_kwargs


def _model() -> lc.ImageClassifier:
    torch.manual_seed(0)
    return lc.ImageClassifier(mlp(), num_classes=4)


def _ws() -> lc.WeightSharing:
    return lc.WeightSharing(k_bounds=(2, 32), pop_size=4, n_gen=2, progress=False)


# -- the estimate ------------------------------------------------------------------------------------------------
def test_hard_count_matches_the_sparse_codec_within_a_few_percent() -> None:
    """The i.i.d. support estimate is what the codec's gap coding spends (random supports, 1-10% dense)."""
    codec = lc.codec.get_codec("sparse_codebook")
    g = torch.Generator().manual_seed(0)
    for density in (0.01, 0.03, 0.1):
        t = torch.zeros(200, 300)
        keep = torch.rand(t.shape, generator=g) < density
        t[keep] = 0.5
        payload = len(codec.encode(t, codebook=[0.5]).payload)
        estimate = hard_bits([int(keep.sum())], [t.numel()], value_bits=0.0) / 8
        assert estimate == pytest.approx(payload, rel=0.1), density


def test_relaxed_bits_tend_to_the_hard_count_and_push_small_weights_to_zero() -> None:
    w = torch.zeros(1000)
    w[:50] = torch.linspace(3.0, 4.0, 50)
    w[50:60] = 0.3
    w.requires_grad_(True)
    bits = relaxed_bits([w], value_bits=3.0, scale=0.5)  # tau = 0.5 x mean |non-zero| ~ 1.5
    assert float(bits.detach()) == pytest.approx(hard_bits([50], [1000], 3.0), rel=0.02)  # 0.3 barely counts
    (grad,) = torch.autograd.grad(bits, [w])
    assert (grad[50:60] > 0).all()  # descent moves the small positive weights towards zero
    assert grad[50:60].min() > 4 * grad[:50].abs().max()  # ... far more than the large ones
    assert torch.all(grad[60:] == 0)  # exact zeros are not alive: no gradient


def test_closed_form_gradient_is_autograds() -> None:
    """The training step's closed-form rate gradient equals autograd's gradient of the documented estimate."""
    g = torch.Generator().manual_seed(3)
    tensors = [torch.randn(40, 30, generator=g), torch.randn(30, generator=g) * 0.1]
    tensors[0][torch.rand(40, 30, generator=g) < 0.7] = 0.0  # held zeros
    reference = [t.clone().requires_grad_(True) for t in tensors]
    expected = relaxed_bits(reference, [3.6, 32.0], 0.5)
    expected.backward()
    for t in tensors:
        t.grad = torch.ones_like(t)  # the loss's gradient is added to, not replaced
    bits = add_rate_gradients(tensors, [3.6, 32.0], 0.5, weight=0.25)
    assert float(bits) == pytest.approx(float(expected.detach()), rel=1e-5)
    for t, r in zip(tensors, reference, strict=True):
        assert r.grad is not None
        assert torch.allclose(t.grad, 1.0 + 0.25 * r.grad, atol=1e-6)


def test_threshold_fits_the_budget_and_keeps_the_largest() -> None:
    g = torch.Generator().manual_seed(1)
    mags = [torch.rand(500, generator=g), torch.rand(200, generator=g) * 2]
    numels = [2000, 400]
    budget = 600.0
    t = threshold_for_bits(mags, numels, 3.0, budget)
    kept = [int((m > t).sum()) for m in mags]
    assert hard_bits(kept, numels, 3.0) <= budget
    assert hard_bits([k + 1 for k in kept], numels, 3.0) > budget * 0.98  # not wastefully below
    assert kept[1] / 200 > kept[0] / 500  # a global threshold: the larger tensor keeps more


# -- the callback ------------------------------------------------------------------------------------------------
def test_target_bytes_with_weight_sharing_writes_a_file_near_the_target(tmp_path: Path) -> None:
    train, val = loaders()
    dense = _model()
    pl.Trainer(**trainer_kwargs(tmp_path / "dense", max_epochs=6)).fit(dense, train, val)
    dense_acc = evaluate_accuracy(dense, val)
    assert dense_acc > 0.8  # four classes: chance is 0.25

    target = 700
    model = _model()
    rate = lc.RateAware(target_bytes=target, events=5, final_fraction=0.3)
    pl.Trainer(callbacks=[rate, _ws()], **trainer_kwargs(tmp_path, max_epochs=6)).fit(model, train, val)
    path = lc.save(model, tmp_path / "model.lcz")
    # the estimate prices values at 3 bits; the codebook found may spend a little more or less
    assert 0.6 * target < path.stat().st_size < 1.3 * target
    codecs = {r.name: r.codec for r in lc.read_artifact(path).tensors}
    assert codecs["0.weight"] == "sparse_codebook"
    assert rate.history[-1]["estimated_bytes"] <= target
    assert [h["event"] for h in rate.history] == [1, 2, 3, 4, 5]
    reloaded = lc.ImageClassifier(lc.load(path, model=mlp()), num_classes=4)
    assert evaluate_accuracy(reloaded, val) > 0.6  # 1,700 parameters in 700 bytes: well above chance (0.25)


def test_alone_prices_values_as_float32_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train, val = loaders()
    rate = lc.RateAware(target_bytes=1500, events=3)
    with caplog.at_level("INFO"):
        pl.Trainer(callbacks=[rate], **trainer_kwargs(tmp_path, max_epochs=3)).fit(_model(), train, val)
    assert "stored exactly (float32)" in caplog.text
    assert rate._value_bits == [32.0] * 6


def test_refused_next_to_successive_pruning() -> None:
    train, val = loaders()
    callbacks = [lc.RateAware(target_bytes=800), lc.SuccessivePruning(target_sparsity=0.8)]
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(None, max_epochs=1))
    with pytest.raises(CompositionError, match="RateAware"):
        trainer.fit(_model(), train, val)


def test_guarded_default_needs_validation() -> None:
    train, _ = loaders()
    trainer = pl.Trainer(callbacks=[lc.RateAware(accuracy_budget=0.01)], **trainer_kwargs(None, max_epochs=1))
    with pytest.raises(ValueError, match="target_bytes="):
        trainer.fit(_model(), train)


def test_target_smaller_than_the_rest_of_the_file_is_refused_before_the_first_step(tmp_path: Path) -> None:
    train, val = loaders()
    trainer = pl.Trainer(callbacks=[lc.RateAware(target_bytes=50, parameters="weights")], **trainer_kwargs(tmp_path))
    with pytest.raises(ValueError, match="target_bytes=50"):
        trainer.fit(_model(), train, val)
    assert trainer.global_step == 0


def test_guard_undoes_cuts_that_cost_more_than_the_budget(tmp_path: Path) -> None:
    train, val = loaders()
    rate = lc.RateAware(accuracy_budget=0.0, events=8, final_fraction=0.2, guard="validation")
    model = _model()
    pl.Trainer(callbacks=[rate, _ws()], **trainer_kwargs(tmp_path, max_epochs=8)).fit(model, train, val)
    assert rate._stopped  # a zero budget: the first cut that costs anything is undone
    assert rate.summary().get("rate/undone_cuts", 0) >= 1
    assert rate._event < 8


def test_under_a_guard_the_rate_term_waits_for_the_baseline(tmp_path: Path) -> None:
    """The rate term changes the weights: before the guard's first validation nothing would judge what it costs."""
    train, val = loaders()
    rate = lc.RateAware(accuracy_budget=0.01, events=4, start=0.0, guard="validation")
    active: list[tuple[int, bool, bool]] = []

    class Probe(pl.Callback):
        def on_before_optimizer_step(self, trainer: pl.Trainer, *args: object) -> None:
            active.append((trainer.current_epoch, rate._rate_active(trainer), rate.guard.best is not None))

    kwargs = trainer_kwargs(tmp_path, max_epochs=3, num_sanity_val_steps=0)
    pl.Trainer(callbacks=[rate, _ws(), Probe()], **kwargs).fit(_model(), train, val)
    assert any(on for _, on, _ in active)  # the term ran once the baseline was there
    assert not any(on for _, on, baseline in active if not baseline)  # and never before it


def test_event_guard_judges_every_cut_and_counts_what_is_lost_between_them(tmp_path: Path) -> None:
    train, val = loaders()
    val = torch.utils.data.DataLoader(blobs(2048, sample_seed=100), batch_size=256)  # a cost told from noise
    rate = lc.RateAware(accuracy_budget=0.01, events=6, final_fraction=0.2, guard="event")
    assert rate.event_guard is not None
    torch.manual_seed(0)
    model = lc.ImageClassifier(mlp(hidden=256), num_classes=4)
    pl.Trainer(callbacks=[rate, _ws()], **trainer_kwargs(tmp_path, max_epochs=6)).fit(model, train, val)
    model.eval()
    with torch.no_grad():
        accuracy = float(torch.cat([(model(x).argmax(1) == y).float() for x, y in val]).mean())
    assert accuracy > 0.8  # judged on a model well above chance (0.25)
    costs = [h["cut_cost"] for h in rate.history if "cut_cost" in h]
    assert costs  # cuts were made, each judged
    assert rate.event_guard.spent <= rate.event_guard.budget + 1e-9
    flat = torch.cat([p.detach().reshape(-1) for p in model.backbone.parameters()])
    assert float((flat == 0).float().mean()) > 0.3  # and it compressed


def test_event_guard_with_no_budget_left_holds_the_support(tmp_path: Path) -> None:
    train, val = loaders()
    rate = lc.RateAware(accuracy_budget=0.0, events=6, final_fraction=0.2, backoff_steps=2, guard="event")
    model = _model()
    pl.Trainer(callbacks=[rate, _ws()], **trainer_kwargs(tmp_path, max_epochs=6)).fit(model, train, val)
    assert rate._stopped
    assert "smallest cut tried" in rate._stop_reason
    assert all(h.get("cut_cost", 0.0) <= 0.0 for h in rate.history)


def _fit_rate(root: Path, ckpt_path: str | None = None, crash_at: int | None = None) -> tuple[lc.RateAware, Path]:
    rate = lc.RateAware(target_bytes=900, events=4, final_fraction=0.3)
    model = _model()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
    extra = [CrashAtEpoch(crash_at)] if crash_at is not None else []
    trainer = pl.Trainer(
        callbacks=[rate, _ws(), ckpt, *extra], **trainer_kwargs(root, max_epochs=6, enable_checkpointing=True)
    )
    train, val = ordered_loaders()
    trainer.fit(model, train, val, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return rate, lc.save(model, root / "final.lcz")


def test_resume_between_cuts_gives_identical_artifact(tmp_path: Path) -> None:
    full_cb, full = _fit_rate(tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit_rate(tmp_path / "part", crash_at=3)
    ckpt = sorted((tmp_path / "part" / "ckpt").glob("*.ckpt"))[-1]
    state = next(s for k, s in torch.load(ckpt, weights_only=True)["callbacks"].items() if "RateAware" in k)
    assert 0 < state["event"] < 4
    resumed_cb, resumed = _fit_rate(tmp_path / "resumed", ckpt_path=str(ckpt))
    assert resumed.read_bytes() == full.read_bytes()
    assert [h["nonzeros"] for h in resumed_cb.history] == [h["nonzeros"] for h in full_cb.history]
    assert math.isclose(resumed_cb.current_weight, full_cb.current_weight)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_bytes": 0}, "`target_bytes`"),
        ({"target_bytes": 1.5}, "`target_bytes`"),
        ({"weight": -1}, "`weight`"),
        ({"steer": 2}, "`steer`"),
        ({"scale": 0}, "`scale`"),
        ({"value_bits": "many"}, "`value_bits`"),
        ({"events": 0}, "`events`"),
        ({"final_fraction": 1.0}, "`final_fraction`"),
        ({"parameters": "some"}, "`parameters`"),
        ({}, "needs a target"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lc.RateAware(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("values", ["WeightSharing", "Ternarization"])
def test_composes_after_elimination_and_before_a_value_method(tmp_path: Path, values: str) -> None:
    """NeuronElimination -> RateAware -> a value method: one fit, each effect in the file, reloads exactly."""
    train, val = loaders()
    model = _model()
    ne = lc.NeuronElimination(target_params=0.6, rounds=2, min_rows_per_neuron=4, verbose=False)
    value_cb = _ws() if values == "WeightSharing" else lc.Ternarization()
    # Ternarization keeps the small last layer and the biases in float32: RateAware takes the layers it ternarizes
    parameters = "all" if values == "WeightSharing" else ["0.weight", "2.weight"]
    rate = lc.RateAware(target_bytes=1200, events=3, parameters=parameters)
    pl.Trainer(callbacks=[value_cb, rate, ne], **trainer_kwargs(tmp_path, max_epochs=6)).fit(model, train, val)
    assert rate.window[0] >= ne.window[1]  # consecutive default windows: structure, then support, then values
    path = lc.save(model, tmp_path / "model.lcz")
    codecs = {r.name: r.codec for r in lc.read_artifact(path).tensors}
    assert codecs["0.weight"] == ("sparse_codebook" if values == "WeightSharing" else "ternary")
    assert rate._value_bits == [3.6 if values == "WeightSharing" else 1.0] * len(rate._names)
    backbone = model.backbone
    reloaded = lc.load(path, model=mlp(hidden=backbone[0].out_features))
    x = torch.randn(8, 16)
    assert torch.equal(reloaded(x), backbone.eval()(x))
    assert int(backbone[0].weight.count_nonzero()) <= rate.history[-1]["nonzeros"]


def test_values_priced_far_apart_are_refused_before_the_first_step(tmp_path: Path) -> None:
    """Ternarization leaves the head in float32: one cut would empty it (measured on Fashion-MNIST); refused."""
    train, val = loaders()
    callbacks = [lc.RateAware(target_bytes=1200, events=3), lc.Ternarization()]
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=2))
    with pytest.raises(CompositionError, match="parameters=") as err:
        trainer.fit(_model(), train, val)
    assert "4.weight" in str(err.value)
    assert trainer.global_step == 0
    # one price for all, given by the user: accepted
    callbacks = [lc.RateAware(target_bytes=1200, events=3, value_bits=2.0), lc.Ternarization()]
    pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=2)).fit(_model(), train, val)


def test_cuts_show_in_the_progress_bar(tmp_path: Path) -> None:
    """Long events show their progress beside the loss in Lightning's bar, not only in the log."""
    train, val = loaders()
    rate = lc.RateAware(target_bytes=1200, events=3)
    trainer = pl.Trainer(callbacks=[rate], **trainer_kwargs(tmp_path, max_epochs=3, enable_progress_bar=True))
    trainer.fit(_model(), train, val)
    assert trainer.progress_bar_metrics["rate/event"] == 3.0
    assert trainer.progress_bar_metrics["rate/estimated_bytes"] > 0
