"""Composition: every ordered pair of the four callbacks (and the recipes' triples) in one fit.

Each combination either composes (the artifact reloads to identical outputs and every method's effect is still in
the file) or is refused before the first training step with both callbacks named.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import lightning_compress as lc
from lightning_compress.callbacks.base import CompressionCallback
from lightning_compress.callbacks.plan import default_windows
from lightning_compress.representation import CompositionError, Representation
from tests.helpers.models import CrashAtEpoch, loaders, mlp, ordered_loaders, run_ddp_check, trainer_kwargs

_EPOCHS = 4


def _ne() -> lc.NeuronElimination:
    return lc.NeuronElimination(target_params=0.6, rounds=2, min_rows_per_neuron=4, verbose=False)


def _surp() -> lc.SuccessivePruning:
    return lc.SuccessivePruning(target_sparsity=0.8)


def _tern() -> lc.Ternarization:
    return lc.Ternarization()


def _ws() -> lc.WeightSharing:
    return lc.WeightSharing(k_bounds=(2, 32), pop_size=4, n_gen=2, progress=False)


FACTORIES: dict[str, Callable[[], CompressionCallback]] = {
    "NeuronElimination": _ne,
    "SuccessivePruning": _surp,
    "Ternarization": _tern,
    "WeightSharing": _ws,
}
#: combinations refused, with the reason in one word
REFUSED = {frozenset({"Ternarization", "WeightSharing"}): "values"}
TRIPLES = [
    ("NeuronElimination", "SuccessivePruning", "WeightSharing"),
    ("NeuronElimination", "SuccessivePruning", "Ternarization"),
]


def _fit(names: tuple[str, ...], tmp_path: Path) -> tuple[lc.ImageClassifier, list[CompressionCallback]]:
    torch.manual_seed(0)
    model = lc.ImageClassifier(mlp(), num_classes=4)
    callbacks = [FACTORIES[n]() for n in names]
    train, val = loaders()
    pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=_EPOCHS)).fit(model, train, val)
    return model, callbacks


def check_effects(names: tuple[str, ...], model: lc.ImageClassifier, path: Path) -> None:
    """Each method's effect is in the file: smaller shapes, kept zeros, one magnitude per ternary row, a codebook."""
    artifact = lc.read_artifact(path)
    state = artifact.state_dict()
    codecs = {r.name: r.codec for r in artifact.tensors}
    dense_params = sum(p.numel() for p in mlp().parameters())
    params = sum(t.numel() for n, t in state.items() if "running" not in n)
    if "NeuronElimination" in names:
        assert params < 0.8 * dense_params, "the layers did not shrink"
    else:
        assert params == dense_params
    weights = [n for n in state if n.endswith("weight")]
    if "SuccessivePruning" in names:
        zeros = sum(int((state[n] == 0).sum()) for n in state) / params
        assert zeros >= 0.75, f"SuccessivePruning's zeros were undone: {zeros:.2%}"
    if "Ternarization" in names:
        ternary = [n for n in weights if codecs[n] == "ternary"]
        assert ternary, codecs
        for name in ternary:
            for row in state[name].reshape(state[name].shape[0], -1):
                assert row.abs().unique().numel() <= 2  # {0, scale}
    if "WeightSharing" in names:
        shared = [n for n, c in codecs.items() if c in ("codebook", "sparse_codebook")]
        assert shared, codecs
        values = torch.cat([state[n].reshape(-1) for n in shared]).unique()
        assert values.numel() <= 33  # k_bounds[1] + the kept zero
        if "SuccessivePruning" in names:
            assert {codecs[n] for n in shared} == {"sparse_codebook"}
    if "SuccessivePruning" in names and not {"WeightSharing", "Ternarization"} & set(names):
        assert {codecs[n] for n in weights} == {"surp"}
    loaded = lc.load(path, model=mlp())
    x = torch.randn(8, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.backbone(x), loaded(x)), "the artifact does not reload to identical outputs"


PAIRS = list(itertools.permutations(FACTORIES, 2))


@pytest.mark.parametrize("names", PAIRS + TRIPLES, ids=lambda names: "+".join(n[:4] for n in names))
def test_combination_composes_or_is_refused(names: tuple[str, ...], tmp_path: Path) -> None:
    refused = next((why for pair, why in REFUSED.items() if pair <= set(names)), None)
    if refused is not None:
        steps: list[int] = []

        class CountSteps(pl.Callback):
            def on_train_batch_start(self, *args: object) -> None:
                steps.append(1)

        torch.manual_seed(0)
        model = lc.ImageClassifier(mlp(), num_classes=4)
        train, val = loaders()
        trainer = pl.Trainer(
            callbacks=[*[FACTORIES[n]() for n in names], CountSteps()], **trainer_kwargs(tmp_path, max_epochs=1)
        )
        with pytest.raises(CompositionError) as err:
            trainer.fit(model, train, val)
        message = str(err.value)
        assert all(n in message for n in names if n in ("Ternarization", "WeightSharing")), message
        assert refused in message
        assert "parameters=" in message
        assert not steps, "refused after training started"
        return
    model, _ = _fit(names, tmp_path)
    path = lc.save(model, tmp_path / "composed.lcz")
    check_effects(names, model, path)


def test_split_tensors_let_two_value_methods_compose(tmp_path: Path) -> None:
    """The way out the refusal names: Ternarization on the hidden layers, WeightSharing on the rest."""
    torch.manual_seed(0)
    model = lc.ImageClassifier(mlp(), num_classes=4)
    tern = lc.Ternarization(layers=["0", "2"])
    share = lc.WeightSharing(
        parameters=["0.bias", "2.bias", "4"], k_bounds=(2, 16), pop_size=4, n_gen=2, progress=False
    )
    train, val = loaders()
    pl.Trainer(callbacks=[tern, share], **trainer_kwargs(tmp_path, max_epochs=2)).fit(model, train, val)
    codecs = {r.name: r.codec for r in lc.read_artifact(lc.save(model, tmp_path / "split.lcz")).tensors}
    assert codecs == {
        "0.weight": "ternary",
        "0.bias": "codebook",
        "2.weight": "ternary",
        "2.bias": "codebook",
        "4.weight": "codebook",
        "4.bias": "codebook",
    }


def test_default_windows_follow_the_aspect_order() -> None:
    ne, surp, ws = _ne(), _surp(), _ws()
    windows = default_windows([ws, surp, ne])
    assert windows[id(ne)] == (0.0, 0.5)
    assert windows[id(surp)] == (0.5, 1.0)
    assert windows[id(ws)] == (1.0, 1.0)


def test_overlapping_windows_on_shared_tensors_are_refused(tmp_path: Path) -> None:
    model = lc.ImageClassifier(mlp(), num_classes=4)
    train, val = loaders()
    callbacks = [lc.SuccessivePruning(target_sparsity=0.8, start=0.0, end=0.8), lc.Ternarization(start=0.5)]
    with pytest.raises(CompositionError, match=r"SuccessivePruning .* Ternarization .* overlapping windows"):
        pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=1)).fit(model, train, val)


def test_sharing_at_an_epoch_puts_the_default_pruning_window_before_it(tmp_path: Path) -> None:
    """WeightSharing(at_epoch=...) with a default SuccessivePruning: the pruning fills the fit before the sharing."""
    model = lc.ImageClassifier(mlp(), num_classes=4)
    train, val = loaders()
    sharing, pruning = lc.WeightSharing(at_epoch=1, progress=False), lc.SuccessivePruning(target_sparsity=0.8)
    pl.Trainer(callbacks=[sharing, pruning], **trainer_kwargs(tmp_path, max_epochs=4)).fit(model, train, val)
    assert pruning.window == (0.0, 0.5)
    assert sharing.window == (0.5, 0.5)
    codecs = {r.codec for r in lc.read_artifact(lc.save(model, tmp_path / "m.lcz")).tensors}
    assert "sparse_codebook" in codecs


def test_sharing_inside_an_explicit_pruning_window_is_refused(tmp_path: Path) -> None:
    """WeightSharing fixing values that SuccessivePruning's later stages would rewrite: refused before training."""
    model = lc.ImageClassifier(mlp(), num_classes=4)
    train, val = loaders()
    callbacks = [lc.WeightSharing(at_epoch=0, progress=False), lc.SuccessivePruning(target_sparsity=0.8, end=1.0)]
    with pytest.raises(CompositionError, match="overlapping windows"):
        pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=3)).fit(model, train, val)


def test_two_instances_of_one_method_are_refused(tmp_path: Path) -> None:
    model = lc.ImageClassifier(mlp(), num_classes=4)
    train, val = loaders()
    callbacks = [lc.SuccessivePruning(parameters="weights"), lc.SuccessivePruning(parameters=["0.bias"])]
    with pytest.raises(CompositionError, match="2 SuccessivePruning callbacks"):
        pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=1)).fit(model, train, val)


def test_representation_is_plain_data() -> None:
    rep = Representation()
    rep.claim("SuccessivePruning", "support", ["a", "b"], kind="surp")
    rep.claim("WeightSharing", "values", ["a"], kind="codebook")
    rep.decide("WeightSharing", "values", {"a": {"codebook": [-1.0, 1.0]}})
    back = Representation()
    back.load_state_dict(rep.state_dict())
    assert back.state_dict() == rep.state_dict()
    assert back.codec_plan()["a"].codec == "sparse_codebook"
    assert "b" not in back.codec_plan()  # support alone, values not decided yet: the default codec


def _fit_composed(root: Path, ckpt_path: str | None = None, crash_at: int | None = None) -> Path:
    torch.manual_seed(0)
    model = lc.ImageClassifier(mlp(), num_classes=4)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
    extra = [CrashAtEpoch(crash_at)] if crash_at is not None else []
    callbacks = [_ws(), _surp(), _ne(), ckpt, *extra]
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(root, max_epochs=6, enable_checkpointing=True))
    train, val = ordered_loaders()
    trainer.fit(model, train, val, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return lc.save(model, root / "final.lcz")


@pytest.mark.parametrize("crash_at", [2, 4], ids=["during-elimination", "after-the-shrink"])
def test_resumed_composed_fit_writes_the_same_artifact(tmp_path: Path, crash_at: int) -> None:
    full = _fit_composed(tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit_composed(tmp_path / "part", crash_at=crash_at)
    ckpt = sorted((tmp_path / "part" / "ckpt").glob("*.ckpt"))[-1]
    resumed = _fit_composed(tmp_path / "resumed", ckpt_path=str(ckpt))
    assert resumed.read_bytes() == full.read_bytes()


def test_composed_ddp_fit_decides_the_same_on_both_ranks(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp_check("composed", tmp_path)
    assert rank0["0.weight"].shape[0] < 32  # shrunk
    assert sum(int((t == 0).sum()) for t in rank0.values()) >= 0.75 * sum(t.numel() for t in rank0.values())
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    artifact = lc.read_artifact(tmp_path / "model.lcz")
    assert {r.codec for r in artifact.tensors} == {"sparse_codebook"}
