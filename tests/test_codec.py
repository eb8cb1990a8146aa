from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lightning_compress as lc
from lightning_compress.codec import ArtifactError, CodecSpec, frame, get_codec, read_artifact, records
from lightning_compress.codec.entropy import AnsStackReader, AnsStackWriter, ans_encode
from lightning_compress.models import available_models, build_model
from tests.helpers import old_formats


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(3, 8, 3, padding=1),
            bn=nn.BatchNorm2d(8),
            relu=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(8, 4),
        )
    )


def trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial buffers too: a few train-mode forwards update the BN running statistics."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 16, 16))
    return model.eval()


@pytest.mark.parametrize("name", ["lenet_300_100", "lenet5", "resnet20", "vgg16_bn"])
def test_zoo_round_trip_outputs_equal(tmp_path: Path, name: str) -> None:
    model = build_model(name).eval()
    path = lc.save(model, tmp_path / "m.lcz")
    loaded = lc.load(path)
    shape = (1, 28, 28) if name.startswith("lenet") else (3, 32, 32)
    x = torch.randn(3, *shape)
    assert torch.equal(model(x), loaded(x))
    assert read_artifact(path).architecture == {"name": name, "kwargs": {}}


def test_custom_module_needs_fresh_instance(tmp_path: Path) -> None:
    model = trained_like(small_cnn())
    path = lc.save(model, tmp_path / "cnn.lcz", metadata={"acc": 0.5})
    with pytest.raises(ValueError, match="pass `model=` a fresh instance"):
        lc.load(path)
    loaded = lc.load(path, model=small_cnn())
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), loaded(x))
    assert torch.equal(model.bn.running_mean, loaded.bn.running_mean)
    assert read_artifact(path).metadata == {"acc": 0.5}


def test_load_resizes_structurally_smaller_layers(tmp_path: Path) -> None:
    pruned = nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    path = lc.save(pruned, tmp_path / "p.lcz")
    loaded = lc.load(path, model=nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 2)))
    assert loaded[0].out_features == 3
    assert loaded[2].in_features == 3
    x = torch.randn(4, 6)
    assert torch.equal(pruned(x), loaded(x))


def test_load_decodes_tensor_by_tensor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A load never holds every decoded tensor at once, only the one it copies into the model."""
    import weakref

    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8), nn.Linear(8, 8))
    path = lc.save(net, tmp_path / "net.lcz")
    alive: list[weakref.ref[torch.Tensor]] = []
    most = 0
    decode = records.Artifact._decode

    def counted(self: records.Artifact, record: records.TensorRecord) -> torch.Tensor:
        nonlocal most
        tensor = decode(self, record)
        alive.append(weakref.ref(tensor))
        most = max(most, sum(ref() is not None for ref in alive))
        return tensor

    monkeypatch.setattr(records.Artifact, "_decode", counted)
    fresh = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8), nn.Linear(8, 8))
    loaded = lc.load(path, model=fresh)
    assert len(alive) == 8  # eight tensors decoded ...
    assert most == 1  # ... one alive at a time
    x = torch.randn(3, 8)
    assert torch.equal(loaded(x), net(x))


def test_fp16_is_half_size_and_close(tmp_path: Path) -> None:
    model = build_model("lenet_300_100")
    full = lc.save(model, tmp_path / "a.lcz")
    half = lc.save(model, tmp_path / "b.lcz", precision="float16")
    assert os.path.getsize(half) < 0.51 * os.path.getsize(full)
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(model(x), lc.load(half)(x), atol=1e-2)


def test_codec_override_per_tensor(tmp_path: Path) -> None:
    model = nn.Linear(50, 20)
    path = lc.save(model, tmp_path / "o.lcz", codecs={"weight": CodecSpec("dense", {"precision": "float16"})})
    records = {r.name: r for r in read_artifact(path).tensors}
    assert records["weight"].nbytes == 50 * 20 * 2
    assert records["bias"].nbytes == 20 * 4
    with pytest.raises(ValueError, match="does not have"):
        lc.save(model, tmp_path / "x.lcz", codecs={"nope": "dense"})
    with pytest.raises(ValueError, match="Unknown codec 'zip'"):
        lc.save(model, tmp_path / "x.lcz", codecs={"weight": "zip"})
    with pytest.raises(ValueError, match="`precision`"):
        lc.save(model, tmp_path / "x.lcz", precision="int3")


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "version", "empty"])
def test_corrupted_artifacts_raise_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = lc.save(nn.Linear(8, 4), tmp_path / "d.lcz")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[:-10]
    elif damage == "magic":
        data[:4] = b"PK\x03\x04"
    elif damage == "version":
        data[4] = 99
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=str(path.name)):
        lc.load(path, model=nn.Linear(8, 4))


@pytest.mark.parametrize("version", [1, 2])
def test_format_1_and_2_artifacts_are_still_read(tmp_path: Path, version: int) -> None:
    # format 1: a JSON header, plain zlib; format 2: with a preset dictionary; both with a u16 version and SHA-256
    model = trained_like(small_cnn()).eval()
    _, header, payload = old_formats.logical(lc.save(model, tmp_path / "v3.lcz").read_bytes())
    path = tmp_path / f"v{version}.lcz"
    path.write_bytes(old_formats.json_file(header, payload, version))
    assert read_artifact(path).format_version == version
    loaded = lc.load(path, model=small_cnn())
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), loaded(x))


def test_zoo_artifact_names_its_tensors_by_the_architecture(tmp_path: Path) -> None:
    # a zoo model's header gives its registry key (arguments at their defaults left out), not its tensors
    net = build_model("lenet_300_100", num_classes=10, in_shape=[1, 28, 28])
    path = lc.save(net, tmp_path / "m.lcz")
    report = lc.size_report(path)
    assert report.overhead_bytes <= 48  # 6 dense records: codec byte + payload length each, and the frame
    artifact = read_artifact(path)
    assert artifact.architecture == {"name": "lenet_300_100", "kwargs": {}}
    assert [r.name for r in artifact.tensors] == list(net.state_dict())
    assert artifact.format_version == frame.FORMAT_VERSION == 3
    # a user's model: names, shapes and dtypes written (front-coded names), still small
    user = lc.size_report(small_cnn())
    assert user.overhead_bytes < 200  # format 2: 230


def test_metadata_costs_its_bytes_only_when_asked(tmp_path: Path) -> None:
    net = build_model("lenet_300_100")
    plain = lc.save(net, tmp_path / "plain.lcz").stat().st_size
    path = lc.save(net, tmp_path / "meta.lcz", metadata={"val/acc": 0.875})
    assert read_artifact(path).metadata == {"val/acc": 0.875}
    assert path.stat().st_size == plain + len(b'{"val/acc":0.875}') + 1  # the JSON and its length


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.lcz"):
        lc.load(tmp_path / "missing.lcz")


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = lc.save(nn.Linear(4, 2), tmp_path / "keep.lcz")
    before = path.read_bytes()
    codec = get_codec("dense")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(type(codec), "encode", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        lc.save(nn.Linear(4, 2), path)
    monkeypatch.undo()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        lc.save(nn.Linear(4, 2), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.lcz"]


def test_lightning_module_is_unwrapped_to_backbone(tmp_path: Path) -> None:
    clf = lc.ImageClassifier(build_model("lenet_300_100"), num_classes=10)
    path = lc.save(clf, tmp_path / "clf.lcz")
    names = [r.name for r in read_artifact(path).tensors]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]


def test_every_zoo_model_is_registered() -> None:
    assert set(available_models()) >= {
        "lenet_300_100",
        "lenet5",
        "resnet20",
        "resnet32",
        "resnet56",
        "vgg16_bn",
        "resnet18_cifar",
        "resnet18",
        "resnet50",
    }


def test_shared_ans_stream_round_trip_and_errors() -> None:
    rng = np.random.default_rng(0)
    sequences = [(rng.integers(0, k, size=m), k) for k, m in ((2, 50), (7, 0), (30, 400), (3, 9))]
    writer = AnsStackWriter()
    for symbols, k in sequences:
        writer.add(symbols, np.bincount(symbols, minlength=k) + 1)
    data = writer.finish()
    separate = sum(len(ans_encode(s.astype(np.int32), np.bincount(s, minlength=k) + 1)) for s, k in sequences)
    assert len(data) < separate  # one coder state and padding instead of one per sequence
    reader = AnsStackReader(data)
    for symbols, k in sequences:
        assert reader.take(np.bincount(symbols, minlength=k) + 1, symbols.size).tolist() == symbols.tolist()
    reader.finish()
    unread = AnsStackReader(data)
    unread.take(np.bincount(sequences[0][0], minlength=2) + 1, 50)
    with pytest.raises(ValueError, match="left over"):
        unread.finish()
    with pytest.raises(ValueError, match="32-bit words"):
        AnsStackReader(data[:-1])


def test_codec_imports_no_lightning() -> None:
    """The codec layer depends on nothing above it: reading and writing artifacts never imports Lightning."""
    import subprocess
    import sys

    code = (
        "import sys, lightning_compress.codec\n"
        "heavy = [m for m in ('lightning', 'torchvision', 'torch_pruning') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_one_version_everywhere() -> None:
    """The package, the artifact header and pyproject name one version (the codec layer keeps its own copy)."""
    import tomllib

    from lightning_compress.codec.base import LIBRARY_VERSION

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert lc.__version__ == LIBRARY_VERSION == pyproject["project"]["version"]


def _template_digest(name: str) -> str:
    from lightning_compress.codec.template import architecture_template

    template = architecture_template({"name": name, "kwargs": {}})
    rows = [[k, list(v.shape), v.dtype, v.role] for k, v in template.items()]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def test_zoo_templates_are_those_format_3_was_written_with() -> None:
    # format 3 names a zoo model's tensors by its architecture: a zoo model whose tensors change (names, order,
    # shapes at its defaults) would make the files already written misread. Such a change needs a new format
    # version (and then this file rewritten: tests/data/zoo_templates.json).
    stored = json.loads((Path(__file__).parent / "data" / "zoo_templates.json").read_text())
    assert set(stored) == set(available_models())
    changed = [name for name in stored if _template_digest(name) != stored[name]]
    assert not changed, f"zoo models whose tensors changed: {changed}"
