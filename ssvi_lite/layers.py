"""Masked mean-field Gaussian layers (docs/method.md §1–2; notebook 01_dense_vi introduces them).

Each weight θ_i of a Linear/Conv2d layer has q(θ_i) = N(μ_i, σ_i²) with σ = softplus(ρ), restricted
to a binary support: θ_i = 0 exactly where ``mask`` is False. Biases stay point estimates.

Forward modes (one per layer, switched for a whole model by :func:`forward_mode`):
- ``lrt``    local reparameterisation: mean = op(x, μ⊙m), var = op(x², σ²⊙m),
             out = mean + sqrt(var + 1e-8)·ε with ε ~ N(0, I) of the output's shape
             (training default);
- ``sample`` one weight draw θ = (μ + σ·ε)⊙m shared by the whole batch;
- ``mean``   θ = μ⊙m, deterministic (the "mean network").

KL to the prior N(0, σ_p²) (σ_p = ``prior_sigma``), summed over active weights only:
    KL_i = log(σ_p/σ_i) + (σ_i² + μ_i²)/(2 σ_p²) − 1/2.

The mask is a bool tensor of μ's shape, always: assigning anything else (a float mask would scale
the weights, a smaller one would broadcast) raises ValueError, and so does a forward pass that
finds one (changed through ``.data``). Sizes, kernels, strides etc. are checked when a layer is
made.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Integral
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import FORWARD_MODES

LRT_EPS = 1e-8


def _check_mask(mask: Any, shape: torch.Size) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != shape:
        got = (f"{mask.dtype} of shape {tuple(mask.shape)}" if isinstance(mask, Tensor)
               else type(mask).__name__)
        raise ValueError(f"mask must be a bool tensor of shape {tuple(shape)} (True = active "
                         f"weight), got {got}")


def _check_sizes(layer: str, minimum: int, pairs: bool = False, **sizes: Any) -> None:
    """ValueError unless each size is an integer ≥ ``minimum`` (or, with ``pairs``, two)."""
    for name, value in sizes.items():
        pair = pairs and isinstance(value, (tuple, list)) and len(value) == 2
        if not all(isinstance(v, Integral) and not isinstance(v, bool) and v >= minimum
                   for v in (value if pair else (value,))):
            what = "an integer" + (" (or a pair of integers)" if pairs else "")
            raise ValueError(f"{layer}: {name}={value!r} must be {what} ≥ {minimum}")


def _check_positive(name: str, value: Any) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def softplus_inverse(sigma: Tensor) -> Tensor:
    """ρ such that softplus(ρ) = σ (stable for small and large σ)."""
    return sigma + torch.log(-torch.expm1(-sigma))


def gaussian_kl(mu: Tensor, sigma: Tensor, prior_sigma: float) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, σ_p²)) per entry: log(σ_p/σ) + (σ² + μ²)/(2σ_p²) − 1/2
    (docs/method.md §3)."""
    return (math.log(prior_sigma) - torch.log(sigma)
            + (sigma**2 + mu**2) / (2 * prior_sigma**2) - 0.5)


class _MeanFieldLayer(nn.Module):
    """Shared state and maths of the masked mean-field layers; subclasses supply ``_op``."""

    def _init_variational(self, weight_shape: tuple[int, ...], bias: bool, prior_sigma: float,
                          sigma_init: float) -> None:
        _check_positive("prior_sigma", prior_sigma)
        _check_positive("sigma_init", sigma_init)
        self.mu = nn.Parameter(torch.empty(weight_shape))
        self.rho = nn.Parameter(torch.empty(weight_shape))
        self.bias = nn.Parameter(torch.zeros(weight_shape[0])) if bias else None
        self.register_buffer("mask", torch.ones(weight_shape, dtype=torch.bool))
        self.prior_sigma = float(prior_sigma)
        self.mode = "lrt"
        # written by one module each: subspace.capture_dense_grads (on subspace-update steps) and
        # distributed.noise_rows (the rows of this rank in the global batch)
        self.capture_dense_grad = False
        self.dense_grad: Tensor | None = None  # ∂CE/∂(μ⊙m), dense, captured on such steps
        self.batch_rows: tuple[int, int, int] | None = None
        nn.init.kaiming_normal_(self.mu, nonlinearity="relu")
        with torch.no_grad():
            self.rho.fill_(float(softplus_inverse(torch.tensor(sigma_init))))

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "mask" and "mask" in self.__dict__.get("_buffers", {}):
            _check_mask(value, self.mu.shape)
        super().__setattr__(name, value)

    @property
    def sigma(self) -> Tensor:
        """σ = softplus(ρ)."""
        return F.softplus(self.rho)

    @property
    def n_weights(self) -> int:
        return self.mask.numel()

    @property
    def n_active(self) -> int:
        return int(self.mask.sum())

    def active_sigma(self) -> Tensor:
        """σ of the active weights, a 1-D tensor (row-major order)."""
        return self.sigma[self.mask]

    def kl_sum(self) -> Tensor:
        """Σ over active weights of KL(N(μ_i, σ_i²) ‖ N(0, prior_sigma²))."""
        kl = gaussian_kl(self.mu, self.sigma, self.prior_sigma)
        return torch.where(self.mask, kl, torch.zeros_like(kl)).sum()

    def _watch(self, weight: Tensor) -> Tensor:
        """On update steps, keep the dense gradient of the data term w.r.t. the masked weight."""
        if self.capture_dense_grad and weight.requires_grad:
            weight.register_hook(self._store_dense_grad)
        return weight

    def _store_dense_grad(self, grad: Tensor) -> None:
        self.dense_grad = grad.detach().clone()

    def active_mask(self) -> Tensor:
        """The mask the forward pass applies (sparse VD swaps in its pruned one at evaluation)."""
        return self.mask

    def forward(self, x: Tensor) -> Tensor:
        if self.mask.dtype != torch.bool or self.mask.shape != self.mu.shape:
            _check_mask(self.mask, self.mu.shape)
        m = self.active_mask().to(self.mu.dtype)
        if self.mode == "lrt":
            mean = self._op(x, self._watch(self.mu * m), self.bias)
            var = self._op(x * x, self.sigma**2 * m, None)
            return mean + torch.sqrt(var + LRT_EPS) * self._lrt_noise(mean)
        if self.mode == "sample":
            theta = (self.mu + self.sigma * torch.randn_like(self.mu)) * m
            return self._op(x, self._watch(theta), self.bias)
        if self.mode == "mean":
            return self._op(x, self._watch(self.mu * m), self.bias)
        raise ValueError(f"mode={self.mode!r} is not known; "
                         f"choose one of {', '.join(FORWARD_MODES)}")

    def _lrt_noise(self, like: Tensor) -> Tensor:
        """ε ~ N(0, I) shaped like the output; under data parallelism, this rank's rows of the
        global batch's draw (so N processes reproduce one)."""
        if self.batch_rows is None:  # drawn in logical order: the memory layout cannot matter
            return torch.randn(like.shape, dtype=like.dtype, device=like.device)
        start, stop, total = self.batch_rows
        return torch.randn((total, *like.shape[1:]), dtype=like.dtype,
                           device=like.device)[start:stop]

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        density = self.n_active / self.n_weights
        return f"{super().extra_repr()}, density={density:.3f}, mode={self.mode}".lstrip(", ")


class MeanFieldLinear(_MeanFieldLayer):
    """Mean-field Gaussian ``nn.Linear``: ``mu``/``rho``/``mask`` of shape (out, in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 prior_sigma: float = 0.1, sigma_init: float = 1e-3) -> None:
        super().__init__()
        _check_sizes("MeanFieldLinear", 1, in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        self._init_variational((out_features, in_features), bias, prior_sigma, sigma_init)

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, " + super().extra_repr()


class MeanFieldConv2d(_MeanFieldLayer):
    """Mean-field Gaussian ``nn.Conv2d``: ``mu``/``rho``/``mask`` are (out, in/groups, kh, kw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, *,
                 prior_sigma: float = 0.1, sigma_init: float = 1e-3) -> None:
        super().__init__()
        _check_sizes("MeanFieldConv2d", 1, in_channels=in_channels, out_channels=out_channels,
                     groups=groups)
        _check_sizes("MeanFieldConv2d", 1, True, kernel_size=kernel_size, stride=stride,
                     dilation=dilation)
        _check_sizes("MeanFieldConv2d", 0, True, padding=padding)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"MeanFieldConv2d: groups={groups} must divide in_channels="
                             f"{in_channels} and out_channels={out_channels}")
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.dilation, self.groups = dilation, groups
        self._init_variational((out_channels, in_channels // groups, kh, kw), bias, prior_sigma,
                               sigma_init)

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, " + super().extra_repr())


MeanFieldLayer = _MeanFieldLayer  # public name for isinstance checks


def mean_field_layers(model: nn.Module) -> list[tuple[str, _MeanFieldLayer]]:
    """The (name, layer) pairs of every mean-field layer in ``model``, in definition order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _MeanFieldLayer)]


def kl_sum(model: nn.Module) -> Tensor:
    """Σ of ``kl_sum()`` over all mean-field layers (0 for a deterministic model)."""
    terms = [layer.kl_sum() for _, layer in mean_field_layers(model)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def set_mode(model: nn.Module, mode: str) -> None:
    """Set the forward mode (lrt, sample, mean) of every mean-field layer of ``model``."""
    if mode not in FORWARD_MODES:
        raise ValueError(f"mode={mode!r} is not known; choose one of {', '.join(FORWARD_MODES)}")
    for _, layer in mean_field_layers(model):
        layer.mode = mode


@contextmanager
def forward_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Temporarily switch every mean-field layer to ``mode``; the previous modes come back after.

    >>> with forward_mode(model, "mean"):   # doctest: +SKIP
    ...     logits = model(x)
    """
    layers = mean_field_layers(model)
    before = [layer.mode for _, layer in layers]
    set_mode(model, mode)
    try:
        yield model
    finally:
        for (_, layer), old in zip(layers, before):
            layer.mode = old


def bayesianize(module: nn.Module, *, prior_sigma: float = 0.1, sigma_init: float = 1e-3,
                sigma_init_std: float = 0.0, generator: torch.Generator | None = None) -> nn.Module:
    """Replace each ``nn.Linear`` / ``nn.Conv2d`` in ``module`` by its mean-field twin, in place.

    The deterministic weights are copied into μ (so a pretrained net can start VI) and biases are
    kept as point estimates; σ starts at ``|N(sigma_init, sigma_init_std²)|`` per weight.
    Returns ``module`` (or the new layer if ``module`` itself is a Linear/Conv2d).
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"bayesianize needs a torch.nn.Module, got {type(module).__name__}")
    if not (isinstance(sigma_init_std, (int, float)) and math.isfinite(sigma_init_std)
            and sigma_init_std >= 0):
        raise ValueError(f"sigma_init_std must be a number ≥ 0, got {sigma_init_std!r}")
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return _convert(module, prior_sigma, sigma_init, sigma_init_std, generator)
    for name, child in module.named_children():
        if isinstance(child, (nn.Linear, nn.Conv2d)):
            setattr(module, name,
                    _convert(child, prior_sigma, sigma_init, sigma_init_std, generator))
        else:
            bayesianize(child, prior_sigma=prior_sigma, sigma_init=sigma_init,
                        sigma_init_std=sigma_init_std, generator=generator)
    return module


def _convert(layer: nn.Module, prior_sigma: float, sigma_init: float, sigma_init_std: float,
             generator: torch.Generator | None) -> _MeanFieldLayer:
    kw = dict(bias=layer.bias is not None, prior_sigma=prior_sigma, sigma_init=sigma_init)
    if isinstance(layer, nn.Linear):
        new: _MeanFieldLayer = MeanFieldLinear(layer.in_features, layer.out_features, **kw)
    else:
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError(f"bayesianize supports zero padding given as numbers, got {layer!r}")
        new = MeanFieldConv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                              layer.stride, layer.padding, layer.dilation, layer.groups, **kw)
    with torch.no_grad():
        new.mu.copy_(layer.weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
        if sigma_init_std > 0:
            noise = torch.randn(new.rho.shape, generator=generator)
            sigma = (sigma_init + sigma_init_std * noise).abs().clamp_min(1e-12)
            new.rho.copy_(softplus_inverse(sigma))
    return new.to(layer.weight.device, layer.weight.dtype)
