"""Bad input, one table: every public constructor and function names the argument and what it accepts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import lightning_compress as lc
from lightning_compress.codec import ArtifactError

NE, SURP, TERN, WS = lc.NeuronElimination, lc.SuccessivePruning, lc.Ternarization, lc.WeightSharing

# (callable, keyword arguments, the argument the message must name, a fragment of what it accepts)
CASES: list[tuple[Callable[..., Any], dict[str, Any], str, str]] = [
    # NeuronElimination
    (NE, {"tolerance": -0.1}, "tolerance", "[0, 1]"),
    (NE, {"tolerance": "0.1"}, "tolerance", "number"),
    (NE, {"tolerance": True}, "tolerance", "number"),
    (NE, {"start_tolerance": 0.5, "tolerance": 0.1}, "start_tolerance", "[0, 0.1]"),
    (NE, {"start_tolerance": 0.0}, "start_tolerance", "(0, 0.05]"),
    (NE, {"schedule": "exp"}, "schedule", "'geometric'"),
    (NE, {"rounds": 0}, "rounds", "int >= 1"),
    (NE, {"rounds": 2.5}, "rounds", "int >= 1"),
    (NE, {"rounds": True}, "rounds", "int >= 1"),
    (NE, {"score": "l1"}, "score", "'output'"),
    (NE, {"target_params": 1.0}, "target_params", "(0, 1)"),
    (NE, {"target_params": 0}, "target_params", "(0, 1)"),
    (NE, {"accuracy_budget": -0.1}, "accuracy_budget", ">= 0"),
    (NE, {"accuracy_budget": "1pt"}, "accuracy_budget", ">= 0"),
    (NE, {"monitor": ""}, "monitor", "metric name"),
    (NE, {"monitor": 3}, "monitor", "metric name"),
    (NE, {"mode": "up"}, "mode", "'max'"),
    (NE, {"layers": "fc1"}, "layers", "list of names"),
    (NE, {"layers": [1, 2]}, "layers", "list of names"),
    (NE, {"calibration_batches": 0}, "calibration_batches", "int >= 1"),
    (NE, {"min_rows_per_neuron": 0}, "min_rows_per_neuron", "int >= 1"),
    (NE, {"min_neurons": 0}, "min_neurons", "int >= 1"),
    (NE, {"ridge": 1.0}, "ridge", "[0, 1)"),
    (NE, {"removal": "drop"}, "removal", "'mask'"),
    (NE, {"final_fraction": 1.0}, "final_fraction", "[0, 1)"),
    (NE, {"unguarded_tolerance": 0}, "unguarded_tolerance", "(0, 1]"),
    (NE, {"forward_inputs": "x"}, "forward_inputs", "function from a batch"),
    (NE, {"verbose": "yes"}, "verbose", "True or False"),
    # SuccessivePruning
    (SURP, {"target_sparsity": 1.0}, "target_sparsity", "(0, 1)"),
    (SURP, {"target_sparsity": "0.9"}, "target_sparsity", "(0, 1)"),
    (SURP, {"bit_budget": 10}, "bit_budget", "int >= 64"),
    (SURP, {"bit_budget": 1e5}, "bit_budget", "int >= 64"),
    (SURP, {"alpha": 0}, "alpha", "> 0"),
    (SURP, {"refresh": "max"}, "refresh", "'ladder'"),
    (SURP, {"ladder": 1.0}, "ladder", "(0, 1)"),
    (SURP, {"refine_steps": -1}, "refine_steps", "int >= 0"),
    (SURP, {"support_tolerance": 1.0}, "support_tolerance", "[0, 1)"),
    (SURP, {"parameters": "biases"}, "parameters", "'weights'"),
    (SURP, {"stages": [0.5, 0.3]}, "stages", "increasing"),
    (SURP, {"stages": [0.5, 1.2]}, "stages", "increasing"),
    (SURP, {"stages": "0.5"}, "stages", "increasing"),
    (SURP, {"final_fraction": -0.1}, "final_fraction", "[0, 1)"),
    # Ternarization
    (TERN, {"mode": "int8"}, "mode", "'qat'"),
    (TERN, {"rule": "l1"}, "rule", "'twn'"),
    (TERN, {"sparsity": 1.0}, "sparsity", "[0, 1)"),
    (TERN, {"rule": "sparsity"}, "sparsity", "required"),
    (TERN, {"per_channel": "yes"}, "per_channel", "True or False"),
    (TERN, {"layers": "fc1"}, "layers", "list of names"),
    (TERN, {"first_layer": "drop"}, "first_layer", "one of"),
    (TERN, {"last_layer": 1}, "last_layer", "one of"),
    (TERN, {"activations": "relu"}, "activations", "'binary'"),
    (TERN, {"calibration_batches": 0}, "calibration_batches", "int >= 1"),
    (TERN, {"restarts": 0}, "restarts", "int >= 1"),
    (TERN, {"seed": -1}, "seed", "int >= 0"),
    (TERN, {"storage": "zip"}, "storage", "'symbols'"),
    (TERN, {"ntk_activations": "relu"}, "ntk_activations", "'step'"),
    (TERN, {"ntk_learnable_activations": 1}, "ntk_learnable_activations", "True or False"),
    (TERN, {"activation_lr_scale": 0}, "activation_lr_scale", "> 0"),
    (TERN, {"activation_lr_scale": 0.1}, "activation_lr_scale", "learnable"),
    # WeightSharing
    (WS, {"k_bounds": (1, 10)}, "k_bounds", "2 <= k_min < k_max"),
    (WS, {"k_bounds": (10, 5)}, "k_bounds", "2 <= k_min < k_max"),
    (WS, {"k_bounds": (2.5, 8)}, "k_bounds", "two ints"),
    (WS, {"k_bounds": 8}, "k_bounds", "two ints"),
    (WS, {"pop_size": 1}, "pop_size", "int >= 2"),
    (WS, {"n_gen": 0}, "n_gen", "int >= 1"),
    (WS, {"metric": "auc"}, "metric", "'accuracy'"),
    (WS, {"accuracy_budget": 1.5}, "accuracy_budget", "[0, 1)"),
    (WS, {"parameters": "bias"}, "parameters", "'all'"),
    (WS, {"merge": "yes"}, "merge", "True or False"),
    (WS, {"merge_candidates": -1}, "merge_candidates", "int >= 0"),
    (WS, {"at_epoch": -1}, "at_epoch", "int >= 0"),
    (WS, {"max_val_samples": 0}, "max_val_samples", "int >= 1"),
    (WS, {"seed": "a"}, "seed", "int >= 0"),
    (WS, {"output_dir": 3}, "output_dir", "directory path"),
    (WS, {"progress": None}, "progress", "True or False"),
    # ArtifactWriter
    # windows and tensor selections (every callback, from the shared base)
    (SURP, {"start": 1.5}, "start", "[0, 1]"),
    (NE, {"end": -0.1}, "end", "[0, 1]"),
    (TERN, {"start": 0.8, "end": 0.2}, "start", "fractions of the fit"),
    (WS, {"at_epoch": 2, "end": 0.5}, "end", "not both"),
    (SURP, {"parameters": []}, "parameters", "list of parameter/module names"),
    (WS, {"parameters": "biases"}, "parameters", "'weights'"),
    (lc.ArtifactWriter, {"precision": "int8"}, "precision", "'float16'"),
    (lc.ArtifactWriter, {"path": 3}, "path", "file path"),
    (lc.ArtifactWriter, {"metadata": [1]}, "metadata", "dict"),
    (lc.ArtifactWriter, {"metadata": {"a": object()}}, "metadata", "JSON-able"),
    (lc.ArtifactWriter, {"metric_prefixes": "val"}, "metric_prefixes", "list of names"),
    (lc.ArtifactWriter, {"metadata_in_file": "yes"}, "metadata_in_file", "True or False"),
]


@pytest.mark.parametrize(("factory", "kwargs", "argument", "accepted"), CASES, ids=lambda v: str(v)[:40])
def test_bad_constructor_argument_is_named(
    factory: Callable[..., Any], kwargs: dict[str, Any], argument: str, accepted: str
) -> None:
    with pytest.raises(ValueError, match=f"`{argument}`") as info:
        factory(**kwargs)
    assert accepted in str(info.value)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_save_arguments(tmp_path: Path) -> None:
    net = _net()
    for kwargs, argument in (
        ({"precision": "bf16"}, "precision"),
        ({"codecs": ["dense"]}, "codecs"),
        ({"codecs": {"nope.weight": "dense"}}, "codecs"),
        ({"codecs": {"0.weight": "zstd"}}, "zstd"),
        ({"metadata": {"acc": float("nan")}}, "metadata"),
        ({"metadata": "acc"}, "metadata"),
    ):
        with pytest.raises(ValueError, match=argument):
            lc.save(net, tmp_path / "a.lcz", **kwargs)
    with pytest.raises(ValueError, match="`model`"):
        lc.save("net", tmp_path / "a.lcz")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`path`"):
        lc.save(net, 3)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_nan_weights_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    net = _net()
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'0.weight' holds NaN or Inf"):
        lc.save(net, tmp_path / "nan.lcz")
    net[0].weight.data[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        lc.save(net, tmp_path / "inf.lcz")
    assert not list(tmp_path.iterdir())


def test_load_and_report_arguments(tmp_path: Path) -> None:
    path = lc.save(_net(), tmp_path / "a.lcz")
    with pytest.raises(ValueError, match="`model`"):
        lc.load(path, model="net")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`strict`"):
        lc.load(path, model=_net(), strict="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`max_elements`"):
        lc.load(path, model=_net(), max_elements=-1)
    with pytest.raises(ValueError, match="`path`"):
        lc.load(3)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lc.load(tmp_path / "missing.lcz", model=_net())
    with pytest.raises(ValueError, match="`model_or_path`"):
        lc.size_report(3)  # type: ignore[arg-type]
    with pytest.raises(ArtifactError, match="not a tensor of the model"):
        lc.load(path, model=nn.Sequential(nn.Linear(4, 3)))
    with pytest.raises(ArtifactError, match="does not fit the model"):
        lc.load(path, model=nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2)))


def test_nan_calibration_statistics_are_named(tmp_path: Path) -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from tests.helpers.models import loaders, mlp, trainer_kwargs

    train, val = loaders()
    x, y = train.dataset.tensors  # type: ignore[attr-defined]
    poisoned = DataLoader(TensorDataset(torch.full_like(x, float("nan")), y), batch_size=32)
    model = lc.ImageClassifier(mlp(), num_classes=4)
    callback = lc.NeuronElimination(target_params=0.5, calibration_batches=2, verbose=False)

    class Poison(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            trainer.fit_loop._data_source.instance = poisoned  # type: ignore[attr-defined]

    with pytest.raises(FloatingPointError, match=r"calibration statistics of 0's outputs hold NaN"):
        pl.Trainer(callbacks=[Poison(), callback], **trainer_kwargs(tmp_path)).fit(model, train, val)


def test_unknown_names_in_a_tensor_selection_are_listed() -> None:
    from lightning_compress.functional.selection import select_parameters

    with pytest.raises(ValueError, match=r"`parameters` names \['9'\].*its parameters: \['0.weight'"):
        select_parameters(_net(), ["0", "9"])
