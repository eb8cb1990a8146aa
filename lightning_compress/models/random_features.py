"""Random-feature MLPs, the networks NTK-LC (Gu et al. 2022/24) compresses.

Hidden ``Linear`` layers (no bias) are drawn ``N(0, 1)`` and frozen; only the linear head (no bias) trains. Inputs
are centred by the data mean and scaled to unit mean squared norm, and each layer computes
``h = (sigma(W h_prev) - d0) / sqrt(width)``, where ``d0 = E[sigma(tau xi)]`` is the activation's Gaussian mean at
the layer's input scale ``tau`` (propagated as ``tau_next^2 = Var[sigma(tau xi)]``): the centring constant and the
``1/sqrt(width)`` scaling that the NTK equivalence needs. :meth:`RandomFeatureMLP.calibrate` sets the input
statistics from data and the centres from the activations' moments.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_compress.functional.ternarization import (
    GaussianMoments,
    StepFunction,
    match_step_activation,
    quadrature_moments,
    relu_moments,
    step_moments,
)
from lightning_compress.layers import StepActivation
from lightning_compress.models.cifar import vgg16_bn
from lightning_compress.models.registry import register_model

__all__ = ["RandomFeatureMLP", "activation_moments", "match_step_activations", "rf_mlp", "rf_vgg_cifar"]

log = logging.getLogger(__name__)

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def _weight(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(layer).__name__} has no weight tensor.")
    return weight


def activation_moments(activation: nn.Module, tau: float) -> GaussianMoments:
    """Gaussian moments of an activation module at scale ``tau``.

    Closed form for ``nn.ReLU`` and :class:`~lightning_compress.layers.StepActivation`, Gauss-Hermite quadrature for
    any other element-wise module.
    """
    if isinstance(activation, nn.ReLU):
        return relu_moments(tau)
    if isinstance(activation, StepActivation):
        return step_moments(activation.step_function(), tau)

    def fn(t: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return activation(torch.from_numpy(t)).numpy()

    return quadrature_moments(fn, tau)


class RandomFeatureMLP(nn.Module):
    """Frozen random hidden layers with NTK centring and scaling, and a trainable linear head.

    Args:
        in_features: input width (after ``trunk`` and flattening).
        widths: hidden widths ``n_1 .. n_L``.
        num_classes: head width.
        activation: one of ``relu`` (default), ``tanh``, ``sigmoid``, ``gelu``, ``silu``.
        trunk: optional frozen feature extractor applied first (kept in eval mode), e.g. a VGG conv part.

    Examples:
        >>> import torch
        >>> net = RandomFeatureMLP(16, [32, 32], 3)
        >>> net.calibrate(torch.randn(64, 16))
        >>> net(torch.randn(5, 16)).shape, [p.requires_grad for p in net.parameters()]
        (torch.Size([5, 3]), [False, False, True])
    """

    input_mean: torch.Tensor
    input_scale: torch.Tensor
    centers: torch.Tensor
    taus: torch.Tensor

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        num_classes: int,
        activation: str = "relu",
        trunk: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not widths or any(int(w) < 1 for w in widths):
            raise ValueError(f"`widths` must be a non-empty list of positive ints, got {widths!r}.")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {activation!r}.")
        self.trunk = trunk if trunk is not None else nn.Identity()
        self.trunk.requires_grad_(False)
        sizes = [int(in_features), *(int(w) for w in widths)]
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in itertools.pairwise(sizes))
        for weight in self.hidden_weights():
            nn.init.normal_(weight)
            weight.requires_grad_(False)
        self.activations = nn.ModuleList(_ACTIVATIONS[activation]() for _ in widths)
        self.head = nn.Linear(sizes[-1], num_classes, bias=False)
        self.register_buffer("input_mean", torch.zeros(sizes[0]))
        self.register_buffer("input_scale", torch.tensor(1.0 / math.sqrt(sizes[0])))
        self.register_buffer("centers", torch.zeros(len(widths)))
        self.register_buffer("taus", torch.ones(len(widths) + 1))
        self.refresh_centers()

    def train(self, mode: bool = True) -> RandomFeatureMLP:
        """Train mode for the head; the trunk stays in eval mode (frozen statistics)."""
        super().train(mode)
        self.trunk.eval()
        return self

    def hidden_weights(self) -> list[torch.Tensor]:
        """The random hidden layers' weights, input side first."""
        return [_weight(layer) for layer in self.hidden]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk output, flattened: the inputs the random layers see."""
        return self.trunk(x).flatten(1)

    @torch.no_grad()
    def calibrate(self, inputs: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Set the input mean and scale from data (features, i.e. after the trunk), then the centres.

        After it, inputs have mean zero and mean squared norm one, so ``tau_0 = 1``.
        """
        batches = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
        flat = torch.cat([b.reshape(b.shape[0], -1).double() for b in batches])
        mean = flat.mean(0)
        mean_sq_norm = (flat - mean).pow(2).sum(1).mean()
        self.input_mean.copy_(mean.float())
        self.input_scale.copy_((1.0 / mean_sq_norm.clamp_min(1e-12).sqrt()).float())
        self.refresh_centers()

    @torch.no_grad()
    def refresh_centers(self, tau0: float = 1.0) -> list[GaussianMoments]:
        """Recompute ``d0`` and ``tau`` layer by layer from the activations' moments; returns the moments."""
        tau, moments = tau0, []
        self.taus[0] = tau
        for i, act in enumerate(self.activations):
            m = activation_moments(act, tau)
            moments.append(m)
            self.centers[i] = m.d0
            tau = math.sqrt(max(m.variance, 0.0))
            self.taus[i + 1] = tau
        return moments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        h = (self.features(x) - self.input_mean) * self.input_scale
        for layer, act, center in zip(self.hidden, self.activations, self.centers, strict=True):
            h = (act(layer(h)) - center) / math.sqrt(_weight(layer).shape[0])
        out: torch.Tensor = self.head(h)
        return out


@register_model("rf_mlp")
def rf_mlp(
    num_classes: int = 10,
    in_shape: Sequence[int] = (1, 28, 28),
    widths: Sequence[int] = (2000, 2000, 1000),
    activation: str = "relu",
) -> RandomFeatureMLP:
    """Random-feature MLP on flattened images (NTK-LC's MNIST setting: widths 2000-2000-1000, ReLU).

    Args:
        num_classes: head width.
        in_shape: ``(C, H, W)`` of one input.
        widths: hidden widths.
        activation: see :class:`RandomFeatureMLP`.
    """
    return RandomFeatureMLP(math.prod(in_shape), widths, num_classes, activation)


@register_model("rf_vgg_cifar")
def rf_vgg_cifar(
    num_classes: int = 10,
    in_shape: Sequence[int] = (3, 32, 32),
    widths: Sequence[int] = (400, 400, 200),
    activation: str = "relu",
    trunk_weights_path: str | None = None,
) -> RandomFeatureMLP:
    """Random-feature MLP on the frozen conv part of VGG-16-BN (NTK-LC's CIFAR-10 setting, 512 features).

    Args:
        num_classes: head width.
        in_shape: ``(C, H, W)`` of one input.
        widths: hidden widths (paper's compressed setting 400-400-200).
        activation: see :class:`RandomFeatureMLP`.
        trunk_weights_path: a trained ``vgg16_bn`` of this zoo: an ``.lcz`` artifact or a ``state_dict`` file.
            Without it the trunk is random (the features are then poor; train ``vgg16_bn`` first).

    Raises:
        FileNotFoundError: naming ``trunk_weights_path`` when it does not exist.
    """
    vgg = vgg16_bn(num_classes=num_classes, in_shape=in_shape)
    if trunk_weights_path is not None:
        path = Path(trunk_weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"`trunk_weights_path` {str(path)!r} does not exist; give a trained vgg16_bn (.lcz artifact or "
                "state_dict file)."
            )
        if path.suffix == ".lcz":
            from lightning_compress.saving import load

            load(path, model=vgg)
        else:
            vgg.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    trunk = nn.Sequential(*list(vgg.children())[:-1])  # everything up to the classifier, flatten included
    with torch.no_grad():
        width = trunk.eval()(torch.zeros(1, *in_shape)).shape[1]
    return RandomFeatureMLP(width, widths, num_classes, activation, trunk=trunk)


#: A residual below this counts as an exact match of the moment equations.
_EXACT_MATCH = 1e-6


def match_step_activations(net: RandomFeatureMLP, staircase: bool, restarts: int, seed: int) -> list[StepFunction]:
    """Match each layer's step activation to the original activation, propagating the compressed scale.

    The last hidden layer first tries the authors' three-level form, which also matches the variance. For ReLU
    that 4-equation system often has no solution at the compressed net's scale, and its least-squares optimum
    is degenerate (a level collapses, the features go constant). Then the two-level form is used instead: it
    matches the three kernel moments exactly and leaves the variance (a scale on the head's input) unmatched.
    ``staircase``: multi-level steps instead (no three-level last layer).
    """
    tau_orig = tau_new = 1.0  # calibrate() normalised the inputs to unit mean squared norm
    steps = []
    for i, act in enumerate(net.activations):
        target = activation_moments(act, tau_orig)
        step = match_step_activation(target, tau_new, staircase=staircase, restarts=restarts, seed=seed + i)
        if i == len(net.activations) - 1 and not staircase:
            three_level = match_step_activation(
                target, tau_new, last=True, target_tau=math.sqrt(target.variance), restarts=restarts, seed=seed + i
            )
            if three_level.residual < _EXACT_MATCH:
                step = three_level
            else:
                log.info(
                    "Ternarization(ntk): the last layer's three-level system has no exact solution (residual "
                    "%.3g); using the two-level form (kernel moments exact, variance unmatched).",
                    three_level.residual,
                )
        steps.append(step)
        tau_orig = math.sqrt(target.variance)
        tau_new = math.sqrt(step_moments(step, tau_new).variance)
    return steps
