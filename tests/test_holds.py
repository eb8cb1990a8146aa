"""Holds put back after every optimizer step, resolved once per set of holds: never stale after a parameter changes."""

from __future__ import annotations

import copy
import pickle

import torch

from lightning_compress.callbacks.holds import Holds
from lightning_compress.surgery import resize_to_state


def _net() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


@torch.no_grad()
def test_a_replaced_parameter_is_held_not_the_old_one() -> None:
    """A shrink or a resize registers new parameters: the holds follow them, not the tensors resolved before."""
    net, holds = _net(), Holds()
    holds.hold_support(net, {"0.weight": torch.tensor([[1, 0, 1, 1]] * 3)})
    net[0].weight.fill_(1.0)
    holds.apply(net)
    assert float(net[0].weight.sum()) == 9.0
    net[0].weight = torch.nn.Parameter(torch.ones(3, 4))  # as torch-pruning's shrink does
    holds.apply(net)
    assert float(net[0].weight.sum()) == 9.0
    resize_to_state(net, {"0.weight": torch.zeros(3, 4), "2.weight": torch.zeros(2, 5)})
    net[2].weight.fill_(1.0)
    holds.hold_support(net, {"2.weight": torch.tensor([[0, 1, 1, 1, 1]] * 2)})
    holds.apply(net)
    assert float(net[2].weight.sum()) == 8.0


@torch.no_grad()
def test_held_values_and_a_new_set_of_masks_take_effect_at_once() -> None:
    net, holds = _net(), Holds()
    holds.hold_support(net, {"0.weight": torch.ones(3, 4)})
    holds.apply(net)  # resolved with one mask
    holds.hold_values(net, ["2.bias"])
    held = net[2].bias.detach().clone()
    net[2].bias.add_(1.0)
    holds.hold_support(net, {"0.weight": torch.zeros(3, 4)})
    holds.apply(net)
    assert torch.equal(net[2].bias, held)
    assert float(net[0].weight.abs().sum()) == 0.0


def test_copies_hold_masks_and_values_but_no_resolved_tensors() -> None:
    net, holds = _net(), Holds()
    holds.hold_support(net, {"0.weight": torch.ones(3, 4)})
    for copied in (pickle.loads(pickle.dumps(holds)), copy.deepcopy(holds)):
        assert copied._resolved is None
        assert set(copied.support) == {"0.weight"}
