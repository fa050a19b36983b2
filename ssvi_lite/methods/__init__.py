"""The seed papers' sparse-BNN systems and the classic baselines (seed_systems.md).

Each module offers the same four verbs, in the same order, as the core methods in
``ssvi_lite.experiment``: ``build(cfg, data, generator) -> model``, ``fit(model, data, cfg) ->
history``, ``predict_proba(model, x, n_samples) -> (K, N, C)``, ``report(model) -> dict``.

- ``em_mcmc``         EM-MCMC with a spike-and-slab group prior (Ke & Fan, arXiv 2210.12957)
- ``weight_sharing``  stochastic weight sharing, 2DGBNN (Lin et al., AISTATS 2025)
- ``turbo_vbi``       Turbo-VBI structured compression (Xia et al., IEEE TSP 2023)
- ``posthoc``         post-hoc pruning of dense VI by a removal score, then a short fine-tune
- ``svd``             sparse variational dropout (Molchanov et al., ICML 2017)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

Options = TypeVar("Options")


def make_options(cls: type[Options], options: Mapping[str, Any], method: str) -> Options:
    """``cls(**options)`` for a method's options dataclass; an unknown key raises ValueError naming
    the method and the valid keys (each method then checks the values it needs)."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown {method} option(s) {unknown}; valid ones: {', '.join(valid)}")
    return cls(**options)
