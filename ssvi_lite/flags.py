"""Command-line flags generated from :class:`ssvi_lite.config.TrainConfig`: one definition for
``train``, ``sweep`` and ``compare``. Each config field becomes ``--field-name`` (default None: the
preset's value), with its type, choices and help text; the sweep axes become plural list flags
(``--densities 0.1 0.05``); ``--option KEY=VALUE`` fills a method's own options.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Sequence
from typing import Any

from .config import FIELDS, PRESETS, TrainConfig
from .methods import NAMES


def add_config_flags(parser: argparse.ArgumentParser, axes: Sequence[str] = (),
                     skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per config field (default None: the preset's value), generated from the
    dataclass; fields named in ``axes`` become plural list flags (``--densities 0.1 0.05``) for
    sweeps. ``--preset`` and ``--option KEY=VALUE`` are added too."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="kit")
    for name, spec in FIELDS.items():
        if name in ("preset", "method_options") or name in skip:
            continue
        kind, nargs = _flag_type(spec)
        choices = NAMES if name == "method" else spec.metadata.get("choices")
        flag, dest = f"--{name.replace('_', '-')}", name
        help_text = spec.metadata["help"]
        if name in axes:
            flag, dest, nargs = f"--{PLURAL.get(name, name + 's').replace('_', '-')}", name, "+"
            help_text += "; several values: one run per value"
        extra: dict[str, Any] = {"action": argparse.BooleanOptionalAction} if kind is bool else {
            "type": kind, "nargs": nargs, "choices": choices}
        parser.add_argument(flag, dest=dest, default=None, help=help_text, **extra)
    parser.add_argument("--option", action="append", metavar="KEY=VALUE", dest="method_options",
                        help=FIELDS["method_options"].metadata["help"] + ", e.g. n_cycles=4")


PLURAL = {"density": "densities", "addition": "additions", "removal": "removals"}


def _flag_type(spec: dataclasses.Field) -> tuple[Any, Any]:
    """(argparse type, nargs) of a field from its annotation."""
    hint = typing.get_type_hints(TrainConfig)[spec.name]
    if typing.get_origin(hint) is tuple:
        return int, "+"
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0], None


def overrides_from_flags(args: argparse.Namespace, axes: Sequence[str] = ()) -> dict[str, Any]:
    """The config fields given on the command line (axes excluded), ready for make_config."""
    out = {name: getattr(args, name) for name in FIELDS
           if name not in axes and getattr(args, name, None) is not None
           and name not in ("preset", "method_options")}
    if "hidden" in out:
        out["hidden"] = tuple(out["hidden"])
    if getattr(args, "method_options", None):
        out["method_options"] = parse_method_options(args.method_options)
    return out


def parse_method_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["n_cycles=4", "temperature=null"]`` -> ``{"n_cycles": 4, "temperature": None}``.

    A value is read as JSON where it is JSON (numbers, true/false, null, lists), else as text; the
    method checks keys and types against its options (valid keys listed on error).
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {pair!r} is not KEY=VALUE (e.g. --option n_cycles=4)")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options
