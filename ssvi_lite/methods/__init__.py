"""Every training method of the kit: one :class:`Method` record each, in one registry.

A record names the method's verbs in the order a run uses them —

    build(cfg, data, generator) -> model
    stages(model, data, cfg, hooks) -> [Stage, ...]     what the one epoch loop trains
    predict_proba(model, x, n_samples) -> (K, N, C)
    report(model, notes) -> dict                         its own measures for the results row

— and its traits: whether its sparse layers may run the sparse kernels (``ssvi_lite.kernels``),
how it treats ``cfg.density`` (``target``: it trains at that density;
``dense``: always 1; ``own``: it reaches a density of its own), whether it uses the removal and
addition scores, its typed options (``cfg.method_options``, a dataclass), the config fields it
sets by default (``defaults``: applied by :func:`ssvi_lite.config.make_config` and
``TrainConfig.replace`` wherever the caller did not set the field, and recorded in the config) and
its tuning budget (``tuning``: the four settings ``compare --tune`` tries, over the method's one or
two most sensitive knobs; the first is the setting it runs at untuned, so a tie keeps it).

The method lists of the CLI, sweeps, ``compare`` and ``report`` all read :data:`REGISTRY`.
Modules: ``core`` (map, vi, ssvi, static), ``em_mcmc``, ``weight_sharing``, ``turbo_vbi``,
``posthoc``, ``svd`` (notebook 06_sparse_bnn_zoo; docs/baselines.md).
"""
from __future__ import annotations

import dataclasses
import itertools
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

DENSITY_KINDS = ("target", "dense", "own")
Options = TypeVar("Options")
Setting = Mapping[str, Any]  # config fields to override (``method_options`` are merged)


def settings_grid(**axes: tuple[Any, ...]) -> tuple[dict[str, Any], ...]:
    """The settings of a full grid over ``axes`` (the last axis varies fastest).

    >>> settings_grid(kl_scale=(1.0, 0.1), prior_sigma=(0.5,))
    ({'kl_scale': 1.0, 'prior_sigma': 0.5}, {'kl_scale': 0.1, 'prior_sigma': 0.5})
    """
    return tuple(dict(zip(axes, values)) for values in itertools.product(*axes.values()))



@dataclass(frozen=True)
class Method:
    """One training method: its verbs (in the order a run calls them) and its traits."""

    name: str
    title: str  # how tables and figures name it
    build: Callable[..., Any]
    stages: Callable[..., list]
    predict_proba: Callable[..., Any]
    report: Callable[..., dict]
    density: str = "target"  # one of DENSITY_KINDS
    uses_removal: bool = False
    uses_addition: bool = False
    options: type | None = None  # dataclass of cfg.method_options (None: takes no options)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # config fields it sets
    sparse_kernels: bool = False  # its sparse layers may run cfg.kernels="sparse" (kernels.py)
    tuning: tuple[Setting, ...] = ()  # what compare --tune tries; the first is the untuned setting

    def __post_init__(self) -> None:
        if self.density not in DENSITY_KINDS:
            raise ValueError(f"{self.name}: density={self.density!r}, choose from {DENSITY_KINDS}")

    def parse_options(self, options: Mapping[str, Any]) -> Any:
        """The typed options of this method from ``cfg.method_options`` (ValueError naming any
        unknown key or ill-typed value, with the valid keys)."""
        if self.options is None:
            if options:
                raise ValueError(f"method {self.name} takes no options, got "
                                 f"{sorted(options)}")
            return None
        return make_options(self.options, options, self.name)


def make_options(cls: type[Options], options: Mapping[str, Any], method: str) -> Options:
    """``cls(**options)`` for a method's options dataclass after checking every key and the type
    of every value against the dataclass's annotations; the dataclass's ``__post_init__`` then
    checks the ranges."""
    if not isinstance(options, Mapping):
        raise ValueError(f"{method} options must be a mapping of KEY=VALUE, got {options!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown {method} option(s) {unknown}; valid ones: {', '.join(valid)}")
    for key, value in options.items():
        if not _has_type(value, hints[key]):
            raise ValueError(f"{method} option {key}={value!r} must be of type "
                             f"{_type_name(hints[key])}")
    return cls(**options)


def _has_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits ``hint`` (int, float, bool, str and their ``| None`` unions); ints
    pass as floats, bools never pass as numbers."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint) and not (hint is int and isinstance(value, bool))


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint) or (hint,)
    return " or ".join("None" if a is type(None) else a.__name__ for a in args)


def _load() -> dict[str, Method]:
    from . import core, em_mcmc, posthoc, svd, turbo_vbi, weight_sharing

    records = [*core.METHODS, em_mcmc.METHOD, weight_sharing.METHOD, turbo_vbi.METHOD,
               posthoc.METHOD, svd.METHOD]
    return {m.name: m for m in records}


REGISTRY: dict[str, Method] = _load()
NAMES: tuple[str, ...] = tuple(REGISTRY)


def get_method(name: Any) -> Method:
    """The registry record of ``name``; ValueError listing the known methods otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"method={name!r} is not known; choose one of {', '.join(NAMES)}")
    return REGISTRY[name]
