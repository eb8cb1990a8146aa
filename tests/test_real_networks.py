"""Every callback and the composition on the networks users bring: each cell compresses, or is refused up front.

The real constructors (torchvision's ResNet with bottleneck blocks, MobileNetV2, EfficientNet, ViT, Lightning's demo
Transformer) at small widths and inputs so that a cell takes a few seconds; each sits in a user's own
LightningModule as ``self.net``. A cell that composes must show each method's effect in the file (fewer parameters,
kept zeros, ternary rows, a codebook), reload to the same outputs, and give the same bytes whether the LightningModule
or its backbone is saved.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from lightning.pytorch.demos import Transformer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_compress as lc
from lightning_compress.callbacks.base import CompressionCallback
from tests.helpers.models import trainer_kwargs


class UserNet(pl.LightningModule):
    """A user's LightningModule: ``self.net``, cross-entropy, ``val_acc``, Adam (optionally a frozen backbone)."""

    def __init__(self, net: nn.Module, sequence: bool = False) -> None:
        super().__init__()
        self.net, self.sequence = net, sequence

    def forward(self, *args: Any) -> torch.Tensor:
        return self.net(*args)

    def lc_forward_inputs(self, batch: Any) -> Any:
        return (batch[0], batch[0]) if self.sequence else batch[0]

    def _logits(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        out = self(x, x) if self.sequence else self(x)
        return out.reshape(-1, out.shape[-1]), y.reshape(-1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        logits, y = self._logits(batch)
        return nn.functional.cross_entropy(logits, y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        logits, y = self._logits(batch)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=1e-3)


def _images(n: int, size: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g) * 0.5 + y.float().reshape(-1, 1, 1, 1)
    return TensorDataset(x, y)


def _tokens(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 32, (n, 8), generator=g)
    return TensorDataset(x, (x + 1) % 32)


def _bottleneck_resnet() -> nn.Module:
    """torchvision's ResNet class with ResNet-50's bottleneck blocks, narrow, its first two stages only."""
    net = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], 4, width_per_group=16)
    net.layer3, net.layer4, net.fc = nn.Identity(), nn.Identity(), nn.Linear(512, 4)
    return net


def _mobilenet_v2() -> nn.Module:
    return torchvision.models.mobilenet_v2(num_classes=4, width_mult=0.25)


class TiedLM(nn.Module):
    """A language model whose output layer shares the embedding matrix (tied embeddings)."""

    def __init__(self, vocab: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, dim))
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.embed(tokens))))


def _frozen_backbone() -> nn.Module:
    """A fine-tune: a frozen feature extractor and a new head."""
    net = torchvision.models.mobilenet_v2(num_classes=4, width_mult=0.25)
    net.features.requires_grad_(False)
    return net


#: name -> (network, data, sequence model)
NETWORKS: dict[str, tuple[Callable[[], nn.Module], Callable[[int, int], TensorDataset], bool]] = {
    "resnet_bottleneck": (
        _bottleneck_resnet,
        lambda n, s: _images(n, 32, s),
        False,
    ),
    "mobilenet_v2": (
        _mobilenet_v2,
        lambda n, s: _images(n, 32, s),
        False,
    ),
    "vit": (
        lambda: torchvision.models.VisionTransformer(
            image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=4
        ),
        lambda n, s: _images(n, 16, s),
        False,
    ),
    "demo_transformer": (
        lambda: Transformer(vocab_size=32, ninp=32, nhead=2, nhid=64, nlayers=1, dropout=0.0),
        lambda n, s: _tokens(n, s),
        True,
    ),
    "tied_lm": (TiedLM, lambda n, s: _tokens(n, s), False),
    "frozen_backbone": (_frozen_backbone, lambda n, s: _images(n, 32, s), False),
    # the real constructors at their real sizes: minutes per cell on 2 CPU cores (WeightSharing's search), so slow
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=4), lambda n, s: _images(n, 32, s), False),
    "efficientnet_b0": (
        lambda: torchvision.models.efficientnet_b0(num_classes=4),
        lambda n, s: _images(n, 32, s),
        False,
    ),
}

CALLBACKS: dict[str, Callable[[], list[CompressionCallback]]] = {
    "NeuronElimination": lambda: [
        lc.NeuronElimination(target_params=0.7, rounds=2, min_rows_per_neuron=2, verbose=False)
    ],
    "SuccessivePruning": lambda: [lc.SuccessivePruning(stages=[0.5, 0.8])],
    "Ternarization": lambda: [lc.Ternarization()],
    "WeightSharing": lambda: [
        lc.WeightSharing(k_bounds=(2, 16), pop_size=4, n_gen=1, progress=False, screen_samples=None)
    ],
    "full": lambda: [
        lc.NeuronElimination(target_params=0.7, rounds=2, min_rows_per_neuron=2, verbose=False),
        lc.SuccessivePruning(stages=[0.5, 0.8]),
        lc.WeightSharing(k_bounds=(2, 16), pop_size=4, n_gen=1, progress=False, screen_samples=None),
    ],
}
#: cells refused before the first step, with a word of the reason
REFUSED: dict[tuple[str, str], str] = {
    ("frozen_backbone", "NeuronElimination"): "frozen",
    ("frozen_backbone", "full"): "frozen",
}


def _fit(name: str, callbacks: list[CompressionCallback], tmp_path: Path) -> UserNet:
    build, data, sequence = NETWORKS[name]
    torch.manual_seed(0)
    model = UserNet(build(), sequence)
    torch.manual_seed(1)
    train = DataLoader(data(48, 0), batch_size=16, shuffle=True)
    val = DataLoader(data(16, 1), batch_size=16)
    pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=2, num_sanity_val_steps=0)).fit(
        model, train, val
    )
    return model


SLOW = {"resnet18", "efficientnet_b0"}


@pytest.mark.parametrize("method", list(CALLBACKS))
@pytest.mark.parametrize("network", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NETWORKS])
def test_each_method_compresses_real_networks_or_refuses_up_front(network: str, method: str, tmp_path: Path) -> None:
    dense_params = sum(p.numel() for p in NETWORKS[network][0]().parameters())
    callbacks = CALLBACKS[method]()
    if (network, method) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[network, method]):
            _fit(network, callbacks, tmp_path)
        return
    torch.manual_seed(0)
    initial = {n: p.detach().clone() for n, p in NETWORKS[network][0]().named_parameters() if not p.requires_grad}
    model = _fit(network, callbacks, tmp_path)
    whole = lc.save(model, tmp_path / "whole.lcz")
    backbone = lc.save(model.net, tmp_path / "net.lcz")
    assert abs(backbone.stat().st_size - whole.stat().st_size) <= 64  # only the names' prefix differs
    artifact = lc.read_artifact(backbone)
    state = artifact.state_dict()
    codecs = {r.name: r.codec for r in artifact.tensors}
    names = {type(cb).__name__ for cb in callbacks}
    frozen = {n for n, p in model.net.named_parameters() if not p.requires_grad}
    if "NeuronElimination" in names and network != "frozen_backbone":
        assert sum(p.numel() for p in model.net.parameters()) < dense_params, "nothing was eliminated"
    if "SuccessivePruning" in names:
        assert any(c in ("surp", "sparse_codebook", "sparse") for c in codecs.values())
    if "Ternarization" in names:
        assert any(c == "ternary" for c in codecs.values())
    if "WeightSharing" in names:
        assert any(c in ("codebook", "sparse_codebook") for c in codecs.values())
    for name in frozen:  # left alone: stored exactly as they were
        assert torch.equal(state[name], initial[name]), f"frozen {name} changed"
    assert lc.size_report(backbone).ratio > (1.0 if method == "NeuronElimination" else 1.05)
    fresh = NETWORKS[network][0]()
    back = lc.load(backbone, model=fresh)
    model.net.eval()
    inputs = NETWORKS[network][1](4, 5).tensors[0]
    args = (inputs, inputs) if NETWORKS[network][2] else (inputs,)
    with torch.no_grad():
        assert torch.equal(back(*args), model.net(*args))
    assert set(state) | set(artifact.aliases) == set(model.net.state_dict())
