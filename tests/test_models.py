from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_compress.models import build_model

EXPECTED = {  # (input shape, parameters)
    "lenet_300_100": ((1, 28, 28), 266_610),
    "lenet5": ((1, 28, 28), 431_080),
    "resnet20": ((3, 32, 32), 269_722),
    "resnet32": ((3, 32, 32), 464_154),
    "resnet56": ((3, 32, 32), 853_018),
    "resnet18_cifar": ((3, 32, 32), 11_173_962),
    "vgg16_bn": ((3, 32, 32), 14_728_266),
    "resnet18": ((3, 64, 64), 11_689_512),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_zoo_shapes_and_sizes(name: str) -> None:
    shape, params = EXPECTED[name]
    num_classes = 1000 if name == "resnet18" else 10
    model = build_model(name, num_classes=num_classes).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, num_classes)


def test_cifar100_head_and_grey_input() -> None:
    model = build_model("resnet20", num_classes=100, in_shape=[1, 32, 32])
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 100)
    assert model.lc_spec == {"name": "resnet20", "kwargs": {"num_classes": 100, "in_shape": [1, 32, 32]}}


def test_unknown_model() -> None:
    with pytest.raises(ValueError, match=r"Unknown model 'lenet7'.*lenet5"):
        build_model("lenet7")


def test_imagenet_weights_from_local_file(tmp_path: Path) -> None:
    source = build_model("resnet18", num_classes=7)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    loaded = build_model("resnet18", num_classes=7, weights_path=str(tmp_path / "w.pth"))
    assert torch.equal(source.fc.weight, loaded.fc.weight)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_model("resnet50", weights_path=str(tmp_path / "missing.pth"))
