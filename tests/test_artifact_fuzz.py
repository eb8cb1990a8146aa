"""Hostile and damaged artifacts: every case raises ArtifactError, none returns a model or raises anything else.

The cases are drawn with a fixed seed from one small zoo artifact that uses every codec (dense fp32 and fp16,
codebook with shared counts, sparse_codebook, ternary, surp). Header mutations recompute the checksum, as an attacker
would. The header-field mutations are written as format 2 (a JSON header, still read), whose fields can hold values
of any type; format 3's own bytes are mutated in ``test_format_3_header_bytes_...``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import lightning_compress as lc
from lightning_compress.codec import ArtifactError, CodecSpec, frame
from lightning_compress.codec.surp import encode_stream
from lightning_compress.functional.successive_pruning import normalise, refine
from lightning_compress.models import build_model
from tests.helpers import old_formats

ARCH = {"num_classes": 3, "in_shape": [1, 4, 4], "hidden": [12, 8]}
CASES = {"truncate": 150, "bitflip": 150, "version": 20, "header": 900}


def _fixture_bytes(tmp_path: Path) -> bytes:
    """A LeNet-300-100-shaped zoo net (16-12-8-3) written with every codec."""
    torch.manual_seed(0)
    model = build_model("lenet_300_100", **ARCH)
    state = model.state_dict()
    u, signs, norms = normalise([state["fc1.weight"].numpy(), state["fc1.bias"].numpy()])
    stream = encode_stream(refine(u, target_sparsity=0.6), signs)
    recon = lc.codec.get_codec("surp")
    codecs: dict[str, CodecSpec] = {}
    offset = 0
    for name, norm in zip(("fc1.weight", "fc1.bias"), norms, strict=True):
        numel = state[name].numel()
        encoded = lc.codec.EncodedTensor(
            "surp",
            tuple(state[name].shape),
            "float32",
            {"key": "k", "offset": offset, "norm": norm},
            b"",
            {"k": stream},
        )
        state[name].copy_(recon.decode(encoded))
        codecs[name] = CodecSpec("surp", {"stream": stream, "offset": offset, "numel": numel, "norm": norm})
        offset += numel
    book = [-0.2, -0.05, 0.0, 0.05, 0.2]
    nearest = (state["fc2.weight"][..., None] - torch.tensor(book)).abs().argmin(-1)
    state["fc2.weight"].copy_(torch.tensor(book)[nearest])
    codecs["fc2.weight"] = CodecSpec("codebook", {"codebook": book, "counts": [5, 20, 40, 20, 5]})
    w3 = state["fc3.weight"]
    state["fc3.weight"].copy_(torch.sign(w3).where(w3.abs() > 0.1, torch.zeros_like(w3)) * 0.3)
    codecs["fc3.weight"] = CodecSpec("ternary")
    sparse_book = [-0.3, 0.1, 0.3]  # fc3.bias: pruned support + shared values (sparse_codebook)
    b3 = state["fc3.bias"]
    b3.copy_(torch.tensor([0.3, 0.0, -0.3]))
    codecs["fc3.bias"] = CodecSpec("sparse_codebook", {"codebook": sparse_book, "counts": [1, 0, 1]})
    codecs["fc2.bias"] = CodecSpec("dense", {"precision": "float16"})
    state["fc2.bias"].copy_(state["fc2.bias"].half().float())
    path = lc.save(model, tmp_path / "fixture.lcz", codecs=codecs, metadata={"val/acc": 0.5})
    loaded = lc.load(path)  # the fixture itself is valid
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(loaded(x), model.eval()(x))
    return path.read_bytes()


def _split(data: bytes) -> tuple[int, dict[str, Any], bytes]:
    """The logical header and payload of the (format 3) fixture, to be written back as format 2."""
    _, header, payload = old_formats.logical(data)
    return 2, {**header, "format_version": 2}, payload


def _join(header: Any, payload: bytes, version: int = 2) -> bytes:
    """Format 2's bytes of any JSON value as the header (fields as mutated, ``format_version`` included)."""
    text = frame.deflate_header(json.dumps(header).encode())
    body = frame.PREFIX.pack(frame.MAGIC, version, len(text)) + text + payload
    return body + hashlib.sha256(body).digest()


def _with_crc(body: bytes | bytearray) -> bytes:
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


def _bad_values(rng: random.Random, current: Any) -> Any:
    """A value of the wrong type or out of range for ``current``'s field."""
    choices: list[Any] = ["x", -1, 2**62, None, [], {}, True, [-3], ["a"], {"a": 1}]
    if not isinstance(current, float):  # another float is a valid value (a norm, a scale), not a damaged one
        choices.append(1.5)
    if isinstance(current, int) and not isinstance(current, bool):
        choices += [current + 1, current - 1, -current - 1, current * 1000 + 7]
    if isinstance(current, str):
        choices += [current + "x", current.upper(), ""]
    choices = [c for c in choices if c != current or type(c) is not type(current)]
    return rng.choice(choices)


def _mutate_header(rng: random.Random, header: dict[str, Any]) -> dict[str, Any] | Any:
    """One header mutation that makes the file invalid: wrong types, unknown names, shapes, dtypes, codecs,
    offsets and shared-blob indices that no longer agree with the model or the payload."""
    h = copy.deepcopy(header)
    tensors = h["tensors"]
    t = rng.choice(tensors)
    kind = rng.randrange(16)
    if kind == 0:  # a top-level field of the wrong type, or removed
        key = rng.choice(["tensors", "shared", "modules", "metadata", "architecture", "format_version"])
        if key == "tensors" or rng.random() < 0.7:
            h[key] = rng.choice(["x", 7, [1, 2], True] + ([{"a": "b"}] if key in ("tensors", "shared") else []))
        else:
            h[key] = {"tensors": "x", "shared": [1], "modules": "m", "metadata": 3, "format_version": 99}.get(key, "x")
    elif kind == 1:  # architecture: unknown model, huge or wrong arguments
        arch = h["architecture"]
        arch_mutations: list[Callable[[], None]] = [
            lambda: arch.__setitem__("name", rng.choice(["no_such_net", "", 3, None])),
            lambda: arch["kwargs"].__setitem__("in_shape", rng.choice([[1, 100000, 100000], [1, -4, 4], "x", [0]])),
            # [13, 8] would pass for a structurally compressed net, but the header records no reference size
            lambda: arch["kwargs"].__setitem__("hidden", rng.choice([[10**9, 8], [-1, 8], [13, 8], [12], "x"])),
            lambda: arch["kwargs"].__setitem__("num_classes", rng.choice([4, 2, -3, 10**10, "3"])),
            lambda: arch["kwargs"].__setitem__("no_such_argument", 1),
            lambda: arch.__setitem__("kwargs", rng.choice(["x", [1], 5])),
        ]
        rng.choice(arch_mutations)()
    elif kind == 2:  # a record field of the wrong type or removed
        key = rng.choice(["name", "role", "shape", "dtype", "codec", "meta", "offset", "nbytes"])
        if rng.random() < 0.3:
            del t[key]
        else:
            t[key] = _bad_values(rng, t[key])
    elif kind in (3, 4):  # shapes
        shape = t["shape"]
        options: list[Callable[[], list[int]]] = [
            lambda: [*shape, 1],
            lambda: shape[:-1] if shape else [2],
            lambda: [s + rng.choice([-1, 1, 7]) for s in shape] or [2],
            lambda: [10**6] * max(len(shape), 1),
            lambda: [s * 2 for s in shape] or [2],
        ]
        if shape:
            i = rng.randrange(len(shape))
            options.append(lambda: [s + (1 if j == i else 0) for j, s in enumerate(shape)])
            options.append(lambda: [s - (1 if j == i else 0) for j, s in enumerate(shape)])
        new = rng.choice(options)()
        t["shape"] = new if new != shape else [*shape, 2]
    elif kind == 5:  # dtypes
        t["dtype"] = rng.choice(
            [d for d in ("float16", "float64", "int64", "bfloat16", "int8", "bool", "q") if d != t["dtype"]]
        )
    elif kind == 6:  # codecs
        codecs = ("dense", "codebook", "sparse_codebook", "sparse", "ternary", "surp", "zstd")
        t["codec"] = rng.choice([c for c in codecs if c != t["codec"]])
    elif kind == 7:  # codec side information removed or of the wrong type
        keys = sorted(t["meta"])
        if keys:
            key = rng.choice(keys)
            if rng.random() < 0.4:
                del t["meta"][key]
            else:
                t["meta"][key] = _bad_values(rng, t["meta"][key])
        else:
            t["meta"] = "x"
    elif kind in (8, 9):  # offsets and lengths
        key = rng.choice(["offset", "nbytes"])
        moved = max(0, t[key] + rng.choice([-2, -1, 1, 3, 10**9]))
        t[key] = moved if moved != t[key] else t[key] + 1
    elif kind in (10, 11):  # shared-blob indices
        key = rng.choice(sorted(h["shared"]))
        mutations: list[Callable[[], None]] = [
            lambda: h["shared"].__setitem__(
                key, [h["shared"][key][0] + rng.choice([-1, 1, 10**9]), h["shared"][key][1]]
            ),
            lambda: h["shared"].__setitem__(key, [h["shared"][key][0], h["shared"][key][1] + rng.choice([-1, 1, 5])]),
            lambda: h["shared"].__setitem__(key, rng.choice([[0], "x", [1, 2, 3], [-1, 4], None])),
            lambda: h["shared"].__setitem__(key + "x", h["shared"].pop(key)),
            lambda: h["shared"].pop(key),
        ]
        rng.choice(mutations)()
    elif kind == 12:  # a record renamed, duplicated or removed
        action = rng.randrange(3)
        if action == 0:
            t["name"] = rng.choice(["fc9.weight", "flatten.weight", t["name"] + "_", ""])
        elif action == 1:
            other = rng.choice([x for x in tensors if x is not t])
            t["name"] = other["name"]
        else:
            tensors.remove(t)
    elif kind == 13:  # inserted modules: unknown type, bad or huge arguments, wrong place
        h["modules"] = {
            rng.choice(["relu1", "fc1", "nowhere", ""]): rng.choice(
                [
                    {"type": "no_such_module", "kwargs": {}},
                    {"type": "step_activation", "kwargs": {"num_thresholds": rng.choice([10**9, -1, "x"])}},
                    {"type": "step_activation", "kwargs": {"bogus": 1}},
                    {"type": "step_activation"},
                    "x",
                ]
            )
        }
    elif kind == 14:  # the reference size of the wrong type
        h["reference_fp32_bytes"] = rng.choice([-5, "big", [1], 1.5, True])
    else:  # the header is valid JSON but not an object
        return rng.choice([[], "x", 3, None, [h]])
    return h


def _cases(data: bytes) -> list[tuple[str, bytes]]:
    rng = random.Random(20261129)
    version, header, payload = _split(data)
    cases: list[tuple[str, bytes]] = []
    for _ in range(CASES["truncate"]):
        cases.append(("truncate", data[: rng.randrange(len(data))]))
    for _ in range(CASES["bitflip"]):
        flipped = bytearray(data)
        position = rng.randrange(len(data))
        flipped[position] ^= 1 << rng.randrange(8)
        cases.append(("bitflip", bytes(flipped)))
    for _ in range(CASES["version"]):  # the prefix's version, checksum recomputed
        body = bytearray(data[: -frame.CHECKSUM.size])
        body[4] = rng.choice([0, 1, 2, 4, 255])
        cases.append(("version", _with_crc(body)))
    for _ in range(CASES["header"]):
        cases.append(("header", _join(_mutate_header(rng, header), payload, version)))
    return cases


def test_fuzzed_artifacts_raise_artifact_error(tmp_path: Path) -> None:
    data = _fixture_bytes(tmp_path)
    cases = _cases(data)
    assert len(cases) >= 1000
    assert all(case != data for _, case in cases)
    outcomes: dict[str, int] = {}
    unnamed: list[int] = []
    path = tmp_path / "case.lcz"
    for i, (kind, case) in enumerate(cases):
        path.write_bytes(case)
        try:
            lc.load(path)
        except ArtifactError as err:
            outcomes[kind] = outcomes.get(kind, 0) + 1
            if str(path) not in str(err):
                unnamed.append(i)
        except Exception as err:
            pytest.fail(f"case {i} ({kind}) raised {type(err).__name__}, not ArtifactError: {err}")
        else:
            pytest.fail(f"case {i} ({kind}) loaded a model from a damaged file")
    assert not unnamed, f"errors that do not name the file: cases {unnamed[:10]}"
    assert outcomes == CASES


def _huge_input(header: dict[str, Any]) -> None:
    # the original report's case, grown to 4 TB of input: beyond any machine's memory-derived `max_elements`
    header["architecture"]["kwargs"]["in_shape"] = [1, 1000000, 1000000]


def _modules_string(header: dict[str, Any]) -> None:
    header["modules"] = "x"


def _alias_to_nothing(header: dict[str, Any]) -> None:
    header["aliases"] = {"fc9.weight": "fc8.weight"}


def _alias_of_a_stored_name(header: dict[str, Any]) -> None:
    header["aliases"] = {"fc1.weight": "fc2.weight"}


def _unknown_source(header: dict[str, Any]) -> None:
    header["tensors"][0]["source"] = "guessed"


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (_huge_input, r"architecture.kwargs.*max_elements"),
        (_modules_string, r"'modules'"),
        (_alias_to_nothing, r"'aliases'"),
        (_alias_of_a_stored_name, r"'aliases'"),
        (_unknown_source, r"source"),
    ],
    ids=["huge-architecture", "modules-string", "alias-to-nothing", "alias-of-stored", "unknown-source"],
)
def test_reported_hostile_headers_name_the_field(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], named: str
) -> None:
    version, header, payload = _split(_fixture_bytes(tmp_path))
    mutate(header)
    path = tmp_path / "hostile.lcz"
    path.write_bytes(_join(header, payload, version))
    with pytest.raises(ArtifactError, match=named):
        lc.load(path)


def test_default_max_elements_follows_the_machines_memory() -> None:
    from lightning_compress.codec.header import default_max_elements

    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert default_max_elements() == max(2**20, physical // 16)  # 16 bytes of reader memory per decoded value


def test_max_elements_bounds_reading(tmp_path: Path) -> None:
    data = _fixture_bytes(tmp_path)
    path = tmp_path / "ok.lcz"
    path.write_bytes(data)
    with pytest.raises(ArtifactError, match="max_elements=100"):
        lc.read_artifact(path, max_elements=100)
    with pytest.raises(ValueError, match="max_elements"):
        lc.read_artifact(path, max_elements=0)
    assert np.isclose(lc.read_artifact(path).metadata["val/acc"], 0.5)


def test_every_bit_flip_and_truncation_is_caught_by_the_checksum(tmp_path: Path) -> None:
    # format 3's CRC-32 (4 bytes, where formats 1-2 had a 32-byte SHA-256): every single-bit error and every
    # truncation of the fixture is refused, exhaustively, before any header field is read
    data = _fixture_bytes(tmp_path)
    where = tmp_path / "damaged.lcz"
    for position in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[position] ^= 1 << bit
            with pytest.raises(ArtifactError, match=r"checksum|magic|version"):
                frame.unframe(bytes(flipped), where)
    for length in range(len(data)):
        with pytest.raises(ArtifactError, match=r"checksum|short"):
            frame.unframe(data[:length], where)


def test_format_3_header_bytes_mutated_raise_artifact_error_or_load(tmp_path: Path) -> None:
    # the binary header changed byte by byte, the checksum recomputed (a hostile writer): the reader refuses with
    # ArtifactError naming the file, or reads a file that is valid after all; never another exception
    data = _fixture_bytes(tmp_path)
    _, _, payload = old_formats.logical(data)
    header_end = len(data) - frame.CHECKSUM.size - len(payload)
    rng = random.Random(20261207)
    path = tmp_path / "case.lcz"
    refused = 0
    for i in range(400):
        body = bytearray(data[: -frame.CHECKSUM.size])
        position = rng.randrange(5, header_end)
        action = rng.randrange(3)
        if action == 0:
            body[position] = rng.randrange(256)
        elif action == 1:
            del body[position]
        else:
            body.insert(position, rng.randrange(256))
        path.write_bytes(_with_crc(body))
        try:
            lc.load(path)
        except ArtifactError as err:
            named = str(path) in str(err)
            refused += 1
            if not named:
                pytest.fail(f"case {i}: the error does not name the file: {err}")
        except Exception as err:
            pytest.fail(f"case {i} raised {type(err).__name__}, not ArtifactError: {err}")
    assert refused > 300


def test_format_3_names_the_architecture_it_needs(tmp_path: Path) -> None:
    data = _fixture_bytes(tmp_path)
    body = bytearray(data[: -frame.CHECKSUM.size])
    at = body.index(b"lenet_300_100")
    body[at : at + 13] = b"lenet_300_999"
    path = tmp_path / "unknown.lcz"
    path.write_bytes(_with_crc(body))
    with pytest.raises(ArtifactError, match=r"'architecture.name'.*lenet_300_999"):
        lc.read_artifact(path)
