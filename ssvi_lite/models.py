"""The kit's networks, chosen by name: an MLP, a LeNet-style CNN for 28×28 inputs and the CIFAR
ResNet-18 (3×3 stem, no max-pool, BatchNorm). Each is written with plain ``nn.Linear``/``nn.Conv2d``
and made Bayesian by :func:`ssvi_lite.layers.bayesianize`, so the same class serves MAP training
(deterministic) and VI (mean-field). Notebook 01_dense_vi introduces :func:`build_model`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import MODELS, TrainConfig
from .layers import bayesianize, mean_field_layers


class MLP(nn.Module):
    """Fully connected ReLU network: input (N, *input_shape) is flattened to (N, D)."""

    def __init__(self, in_features: int, n_classes: int, hidden: tuple[int, ...] = (400, 400)):
        super().__init__()
        ok = isinstance(hidden, (tuple, list)) and all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0
            for h in (in_features, n_classes, *hidden))
        if not ok:
            raise ValueError(f"MLP widths must be positive integers: in_features={in_features!r},"
                             f" n_classes={n_classes!r}, hidden={hidden!r}")
        widths = (in_features, *hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LeNet(nn.Module):
    """LeNet-5-style CNN for 1×28×28 inputs: conv5-pool-conv5-pool-fc120-fc84-fc."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10, image_size: int = 28):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2  # two valid 5×5 convs, each followed by 2×2 pooling
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, n_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv-BN layers with an identity or 1×1-conv shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3×3 stem (no max-pool), stages of 64/128/256/512 channels, 2 blocks each."""

    def __init__(self, in_channels: int = 3, n_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU())
        blocks, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


def deterministic_model(name: str, input_shape: tuple[int, ...], n_classes: int,
                        hidden: tuple[int, ...] = (400, 400)) -> nn.Module:
    """The plain (non-Bayesian) network ``name`` for inputs of ``input_shape`` (per example)."""
    if name == "mlp":
        return MLP(math.prod(input_shape), n_classes, hidden)
    if len(input_shape) != 3:
        raise ValueError(f"model={name!r} needs image inputs (C, H, W), "
                         f"got input_shape={input_shape}")
    if name == "lenet":
        if input_shape[1] < 16 or input_shape[1] != input_shape[2]:
            raise ValueError(f"lenet needs square images of side ≥ 16, got {input_shape}")
        return LeNet(input_shape[0], n_classes, input_shape[1])
    if name == "resnet18":
        return ResNet18(input_shape[0], n_classes)
    raise ValueError(f"model={name!r} is not known; choose one of {', '.join(MODELS)}")


def build_model(cfg: TrainConfig, input_shape: tuple[int, ...], n_classes: int,
                generator: torch.Generator | None = None) -> nn.Module:
    """Build ``cfg.model`` for the data; Bayesian (mean-field) unless ``cfg.method == "map"``.

    μ starts Kaiming-normal (``mu_init="kaiming"``, fan-in, ReLU gain) or N(0, mu_init_std²)
    (``"normal"``, the paper preset); σ starts at |N(sigma_init, sigma_init_std²)|. Masks start
    all-ones: :func:`ssvi_lite.subspace.init_masks` makes them sparse.
    """
    net = deterministic_model(cfg.model, input_shape, n_classes, cfg.hidden)
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            _init_weight(module.weight, cfg.mu_init, cfg.mu_init_std, generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    if cfg.method == "map":
        return net
    bayesianize(net, prior_sigma=cfg.prior_sigma, sigma_init=cfg.sigma_init,
                sigma_init_std=cfg.sigma_init_std, generator=generator)
    assert mean_field_layers(net), "a Bayesian model must have mean-field layers"
    return net


def _init_weight(weight: Tensor, how: str, std: float, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        if how == "normal":
            weight.copy_(torch.randn(weight.shape, generator=generator) * std)
        elif how == "kaiming":
            fan_in = weight[0].numel()
            weight.copy_(torch.randn(weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
