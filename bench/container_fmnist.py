"""What the container costs in each LeNet recipe's artifact: format 3 against format 2 for the same weights.

Each Fashion-MNIST LeNet recipe runs a short fit on the real data (``--epochs`` epochs of ``--batches`` batches:
the container depends on the header's structure, not on how long the fit trained), writes its artifact as the CLI
does, and the same logical header is also framed as format 2 wrote it (JSON with the preset dictionary, content-hash
blob keys, the library version, SHA-256), with and without the run's metadata in the header (format 2's
ArtifactWriter wrote it in; format 3's writes it beside the file). Container = file bytes minus the tensors' and
shared blobs' payload bytes (``size_report``'s container row). Run: ``python -m bench.container_fmnist``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from bench.common import composed, quiet_run, write_results
from lightning_compress.cli import train
from lightning_compress.codec import frame
from lightning_compress.report import size_report

NAME = "container_fmnist"
RECIPES = (
    "dense_lenet300_fmnist",
    "full_lenet300_fmnist",
    "rate_lenet300_fmnist",
    "surp_lenet300_fmnist",
    "share_lenet300_fmnist",
    "ternary_lenet300_fmnist",
    "full_lenet5_fmnist",
    "rate_lenet5_fmnist",
)


def format_2_bytes(path: Path, metadata: dict[str, Any]) -> int:
    """The bytes format 2 took for the same file: prefix, its JSON header deflated with the dictionary, SHA-256."""
    data = path.read_bytes()
    _, header, payload = frame.unframe(data, path)
    keys = {}
    for key, (offset, nbytes) in header["shared"].items():  # format 2 named a blob by its content
        users = [t["codec"] for t in header["tensors"] if key in t["meta"].get("shared_keys", [])]
        family = "surp" if users and users[0] == "surp" else "codebook"
        keys[key] = f"{family}-" + hashlib.sha256(bytes(payload[offset : offset + nbytes])).hexdigest()[:16]

    def renamed(value: Any) -> Any:
        if isinstance(value, str):
            return keys.get(value, value)
        if isinstance(value, list):
            return [renamed(v) for v in value]
        if isinstance(value, dict):
            return {k: renamed(v) for k, v in value.items()}
        return value

    tensors = [{**t, "meta": renamed(t["meta"])} for t in header["tensors"]]
    architecture = header["architecture"]
    if architecture is not None:  # the CLI recorded the data's input shape and classes, defaults included
        architecture = {
            **architecture,
            "kwargs": {"in_shape": [1, 28, 28], "num_classes": 10, **architecture["kwargs"]},
        }
    old = {
        "format_version": 2,
        "library_version": "0.1.0",
        "architecture": architecture,
        "modules": header["modules"],
        "metadata": metadata,
        "reference_fp32_bytes": header["reference_fp32_bytes"],
        "shared": {keys[k]: v for k, v in header["shared"].items()},
        "tensors": tensors,
        **({"aliases": header["aliases"]} if header["aliases"] else {}),
    }
    text = frame.deflate_header(json.dumps(old, separators=(",", ":"), sort_keys=True).encode())
    return frame.PREFIX.size + len(text) + len(payload) + frame.DIGEST_BYTES


def run(recipe: str, epochs: int, batches: int) -> dict[str, Any]:
    overrides = [*quiet_run(0, epochs), f"trainer.limit_train_batches={batches}", "test=false"]
    with composed(recipe, overrides) as cfg:
        _, objects = train(cfg)
        path = Path(cfg.paths.output_dir) / cfg.artifact.name
        report = size_report(path)
        beside = json.loads(path.with_suffix(".json").read_text())
        payload = report.artifact_bytes - report.overhead_bytes
        old_with, old_without = format_2_bytes(path, beside), format_2_bytes(path, {})
    del objects
    codecs = sorted({r.codecs for r in report.rows if r.codecs})
    row = {
        "recipe": recipe,
        "codecs": "+".join(codecs),
        "file bytes": report.artifact_bytes,
        "container bytes": report.overhead_bytes,
        "format 2 container (metadata in file)": old_with - payload,
        "format 2 container (no metadata)": old_without - payload,
        "file smaller than format 2 (x)": round(old_with / report.artifact_bytes, 3),
    }
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batches", type=int, default=100)
    args = parser.parse_args()
    table = [run(recipe, args.epochs, args.batches) for recipe in args.recipes]
    notes = (
        "Container bytes of each LeNet recipe's artifact (Fashion-MNIST, seed 0, a short fit of "
        f"{args.epochs} epoch(s) x {args.batches} batches on the real data): format 3 as written, and format 2's for "
        "the same weights (JSON header with the preset dictionary, content-hash blob keys, SHA-256), with the run's "
        "metadata in the header (as format 2's ArtifactWriter wrote it) and without. The container is the file minus "
        "the tensors' and shared blobs' payload bytes: frame, header with the codecs' side information, checksum."
    )
    print(write_results(NAME, {"args": vars(args)}, table, notes).read_text())


if __name__ == "__main__":
    main()
