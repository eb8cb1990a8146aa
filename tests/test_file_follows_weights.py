"""The file follows from the weights: saving a backbone, a fine-tuned model or tied weights never loses compression."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

import lightning_compress as lc
from lightning_compress.representation import find_representation, representation_of
from tests.helpers.models import loaders, mlp, trainer_kwargs


class BodyModule(pl.LightningModule):
    """A user's own LightningModule holding its network as ``self.body`` (no ``lc_artifact_module``)."""

    def __init__(self, body: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body if body is not None else mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _fit(model: pl.LightningModule, callbacks: list[pl.Callback], tmp_path: Path, epochs: int = 3) -> None:
    torch.manual_seed(0)
    train, val = loaders()
    pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=epochs)).fit(model, train, val)


def test_saving_the_backbone_gives_the_same_bytes_as_saving_the_module(tmp_path: Path) -> None:
    model = BodyModule()
    _fit(model, [lc.SuccessivePruning(target_sparsity=0.8)], tmp_path)
    whole = lc.save(model, tmp_path / "whole.lcz")
    body = lc.save(model.body, tmp_path / "body.lcz")
    dense = lc.save(mlp(), tmp_path / "dense.lcz")
    assert body.stat().st_size < dense.stat().st_size / 3
    # the same tensors, the same codecs and streams: only the names' prefix differs in the header
    assert abs(body.stat().st_size - whole.stat().st_size) <= 16
    codecs = {r.name: r.codec for r in lc.read_artifact(body).tensors}
    assert codecs["0.weight"] == "surp"
    back = lc.load(body, model=mlp())
    x = torch.randn(8, 16)
    assert torch.equal(back(x), model.body.eval()(x))


def test_a_module_holding_the_fit_module_finds_its_representation() -> None:
    inner = mlp()
    representation_of(inner).claim("SuccessivePruning", "support", ["0.weight"], kind="surp")
    outer = nn.ModuleDict({"net": inner})
    assert "net.0.weight" in find_representation(outer).tensors


def test_fine_tuned_after_compression_is_saved_from_its_values(tmp_path: Path) -> None:
    model = BodyModule()
    _fit(model, [lc.SuccessivePruning(target_sparsity=0.8)], tmp_path)
    with torch.no_grad():  # fine-tuning with the zeros kept: the surp stream no longer holds these values
        for p in model.body.parameters():
            p.mul_(1.01)
    path = lc.save(model.body, tmp_path / "tuned.lcz")
    report = lc.size_report(path)
    assert report.sources["0.weight"] == "stale"
    assert lc.read_artifact(path).tensors[0].codec != "dense"
    assert report.ratio > 2.0
    back = lc.load(path, model=mlp())
    x = torch.randn(8, 16)
    assert torch.equal(back(x), model.body.eval()(x))
    assert "stale" in str(report.table().caption)


def test_values_decide_without_any_representation(tmp_path: Path) -> None:
    net = mlp()
    with torch.no_grad():
        net[0].weight.mul_((torch.rand_like(net[0].weight) > 0.9).float())  # 90% zeros, arbitrary values
        net[2].weight.copy_(torch.sign(net[2].weight) * 0.25)  # ternary rows
        net[4].weight.copy_(torch.randint(0, 3, net[4].weight.shape).float() * 0.5)  # three distinct values
    path = lc.save(net, tmp_path / "net.lcz")
    records = {r.name: r for r in lc.read_artifact(path).tensors}
    assert records["0.weight"].codec == "sparse"
    assert records["0.weight"].source == "values"
    assert records["2.weight"].codec in ("ternary", "codebook")
    assert records["4.weight"].codec in ("codebook", "sparse_codebook")
    assert records["0.bias"].codec == "dense"
    assert records["0.bias"].source == "default"
    back = lc.load(path, model=mlp())
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), net.state_dict().values(), strict=True))


class TiedLM(nn.Module):
    """A tiny language model whose output layer shares the embedding matrix."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.embed(tokens))))


def test_tied_weight_is_stored_once_and_tied_again_on_load(tmp_path: Path) -> None:
    lm = TiedLM()
    path = lc.save(lm, tmp_path / "lm.lcz")
    artifact = lc.read_artifact(path)
    assert artifact.aliases == {"out.weight": "embed.weight"}
    assert [r.name for r in artifact.tensors].count("out.weight") == 0
    assert path.stat().st_size < 1.2 * sum(p.numel() for p in lm.parameters()) * 4
    back = lc.load(path, model=TiedLM())
    assert back.out.weight is back.embed.weight
    tokens = torch.randint(0, 50, (4, 7))
    assert torch.equal(back(tokens), lm(tokens))


class TiedLMModule(pl.LightningModule):
    """Next-token prediction on random sequences with a tied embedding / output matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.lm = TiedLM()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm(tokens)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch[0])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[1].reshape(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _token_loader() -> torch.utils.data.DataLoader:
    tokens = torch.randint(0, 50, (64, 9), generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(tokens[:, :-1], tokens[:, 1:])
    return torch.utils.data.DataLoader(data, batch_size=16)


def test_a_tied_weight_selected_by_its_alias_is_compressed_once(tmp_path: Path) -> None:
    model = TiedLMModule()
    pruning = lc.SuccessivePruning(target_sparsity=0.8, parameters=["lm.out.weight"])
    pl.Trainer(callbacks=[pruning], **trainer_kwargs(tmp_path, max_epochs=2)).fit(model, _token_loader())
    path = lc.save(model.lm, tmp_path / "lm.lcz")
    artifact = lc.read_artifact(path)
    codecs = {r.name: r.codec for r in artifact.tensors}
    assert codecs["embed.weight"] == "surp"
    assert "out.weight" not in codecs
    back = lc.load(path, model=TiedLM())
    assert back.out.weight is back.embed.weight
    assert float((back.embed.weight == 0).float().mean()) >= 0.75


def test_ternarization_leaves_tied_and_frozen_layers_alone(tmp_path: Path) -> None:
    model = TiedLMModule()
    ternary = lc.Ternarization(first_layer="ternary", last_layer="ternary")
    pl.Trainer(callbacks=[ternary], **trainer_kwargs(tmp_path, max_epochs=1)).fit(model, _token_loader())
    assert ternary.ternarized == ["lm.hidden.weight"]
    assert model.lm.out.weight is model.lm.embed.weight
    body = BodyModule()
    body.body[0].requires_grad_(False)
    frozen = body.body[0].weight.detach().clone()
    _fit(body, [lc.Ternarization(first_layer="ternary")], tmp_path, epochs=1)
    assert torch.equal(body.body[0].weight, frozen)


def test_frozen_first_layer_is_left_alone_and_no_layer_is_cut_to_a_sliver(tmp_path: Path) -> None:
    model = BodyModule()
    model.body[0].requires_grad_(False)
    frozen = model.body[0].weight.detach().clone()
    elimination = lc.NeuronElimination(target_params=0.3, rounds=3, min_rows_per_neuron=4, verbose=False)
    _fit(model, [elimination], tmp_path)
    assert torch.equal(model.body[0].weight, frozen)  # its pair (0 -> 2) would rewrite it: left alone
    assert "body.0" in elimination.skipped
    assert model.body[2].out_features >= 4  # at least a tenth of its 32 neurons
    assert model.body[2].out_features < 32  # and something was removed


def test_a_later_fit_with_another_value_method_replaces_the_earlier_decision(tmp_path: Path) -> None:
    model = BodyModule()
    _fit(model, [lc.SuccessivePruning(target_sparsity=0.8)], tmp_path, epochs=2)
    sharing = lc.WeightSharing(k_bounds=(2, 32), pop_size=4, n_gen=2, progress=False)
    _fit(model, [sharing], tmp_path, epochs=1)
    path = lc.save(model, tmp_path / "shared.lcz")
    codecs = {r.name: r.codec for r in lc.read_artifact(path).tensors}
    assert codecs["body.0.weight"] in ("codebook", "sparse_codebook")
