"""How much of a real network NeuronElimination can act on: eligible layer pairs and the weights they touch.

For torchvision's ResNet-18, ResNet-50, MobileNetV2, EfficientNet-B0 and ViT-B/16 (ImageNet sizes, random weights:
eligibility depends on the structure only) and Lightning's demo Transformer (its default sizes), the pairs
:func:`~lightning_compress.functional.neuron_elimination.find_layer_pairs` finds, and the share of the network's
weight matrices (Conv/Linear weights and attention's input projections) that eliminating a pair's neurons shrinks:
the producer's rows, the consumer's columns and the depthwise filters between them. The skipped layers are counted
by reason.

    python -m bench.ne_eligible
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from lightning.pytorch.demos import Transformer
from torch import nn

from bench.common import write_results
from lightning_compress.functional.neuron_elimination import find_layer_pairs

NETS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Any]]] = {
    "resnet18": (lambda: torchvision.models.resnet18(), lambda: torch.randn(2, 3, 224, 224)),
    "resnet50": (lambda: torchvision.models.resnet50(), lambda: torch.randn(2, 3, 224, 224)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(), lambda: torch.randn(2, 3, 224, 224)),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(), lambda: torch.randn(2, 3, 224, 224)),
    "vit_b_16": (lambda: torchvision.models.vit_b_16(), lambda: torch.randn(2, 3, 224, 224)),
    "demo_transformer": (lambda: Transformer(), lambda: (torch.randint(0, 100, (2, 16)),) * 2),
}


def weight_matrices(net: nn.Module) -> dict[str, int]:
    """Module name -> elements of its weight matrices (Conv/Linear weight; attention's input projections)."""
    sizes: dict[str, int] = {}
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            sizes[name] = module.weight.numel()
        elif isinstance(module, nn.MultiheadAttention):
            projections = [module.in_proj_weight, module.q_proj_weight, module.k_proj_weight, module.v_proj_weight]
            sizes[f"{name} (in_proj)"] = sum(p.numel() for p in projections if p is not None)
    return sizes


def measure(name: str) -> dict[str, Any]:
    build, example = NETS[name]
    torch.manual_seed(0)
    net = build().eval()
    pairs, skipped = find_layer_pairs(net, example())
    sizes = weight_matrices(net)
    touched = {p.producer for p in pairs} | {p.consumer for p in pairs}
    touched |= {n for p in pairs for n in p.norms if n in sizes}
    producers = {p.producer for p in pairs}
    total = sum(sizes.values())
    reasons = Counter(reason.split(" (")[0].split(" between")[0] for reason in skipped.values())
    return {
        "net": name,
        "weights": total,
        "pairs": len(pairs),
        "eligible_weights": sum(sizes[n] for n in touched) / total,
        "producer_weights": sum(sizes[n] for n in producers) / total,
        "skipped": dict(reasons.most_common()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    args = parser.parse_args()
    rows = [measure(name) for name in args.nets]
    for row in rows:
        print(row, flush=True)
    table = [
        {
            "net": r["net"],
            "weight matrices": f"{r['weights']:,}",
            "pairs": r["pairs"],
            "weights a pair shrinks": f"{r['eligible_weights']:.1%}",
            "of which producers": f"{r['producer_weights']:.1%}",
            "skipped layers (reason: count)": "; ".join(f"{k}: {v}" for k, v in r["skipped"].items()),
        }
        for r in rows
    ]
    notes = (
        "Eligible layer pairs of NeuronElimination on real networks (random weights, ImageNet input sizes; the demo "
        "Transformer at its default sizes). 'Weights a pair shrinks': the producers' rows, consumers' columns and "
        "depthwise filters of every pair, as a share of all Conv/Linear weights and attention input projections."
    )
    print(write_results("ne_eligible", {"runs": rows}, table, notes).read_text())


if __name__ == "__main__":
    main()
