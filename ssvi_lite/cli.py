"""Command line: ``python -m ssvi_lite {demo,train,fetch,sweep,report,compare} ...``.

``demo`` trains MAP, dense VI, SSVI (density 0.1, snr_abs removal + grad addition) and the static
mask on the embedded MNIST subset for several seeds (``ssvi_lite.demo``), prints one table of
mean ± standard error, saves reliability diagrams and a convergence figure and writes JSON.
``train`` runs one configuration. The other subcommands live in their own modules, each offering
``add_arguments(parser)`` and ``main(args) -> int``.

Every command checks its arguments and output paths before it starts any work
(``ssvi_lite.guards``, ``ssvi_lite.fileio.check_output_path``); bad input ends with one line,
``error: ...``, and exit status 2, and nothing is written.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import guards
from .config import make_config, run_id
from .fileio import check_output_path, publish, staging, temporary, write_json
from .flags import add_config_flags, overrides_from_flags

DELEGATED = {  # subcommand -> module offering add_arguments(parser) and main(args)
    "sweep": "ssvi_lite.sweep",
    "report": "ssvi_lite.report",
    "compare": "ssvi_lite.compare",
}
TABLE_COLUMNS = {  # results-row key -> printed header
    "method": "method", "density": "density", "accuracy": "accuracy", "nll": "NLL",
    "ece": "ECE (15 bins)", "brier": "Brier", "train_flops_ratio": "train FLOPs / dense VI",
    "wall_time_s": "wall time (s)",
}


def printed_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """What ``demo`` and ``train`` print: one line per run, the columns of TABLE_COLUMNS."""
    return pd.DataFrame(rows)[list(TABLE_COLUMNS)].rename(columns=TABLE_COLUMNS)


def _format_table(table: pd.DataFrame) -> str:
    return table.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo
    from .convergence import assess
    from .experiment import load_data

    configs = demo.demo_configs(args.seeds, args.epochs, args.n_train)
    out, json_path = _demo_outputs(args, configs)  # checked before any work
    data = load_data(configs[0])
    workers = args.workers or max(1, min(2, os.cpu_count() or 1, len(configs)))
    print(f"ssvi_lite demo: {data.name}, {data.n_train} training / {len(data.y_val)} validation / "
          f"{len(data.y_test)} test images; seeds {list(args.seeds)}; {workers} worker process(es)")
    for preset in dict.fromkeys(c.preset for c in configs):
        c = next(c for c in configs if c.preset == preset)
        print(f"  {preset}: MLP {c.hidden}, κ = {c.kl_scale:g}, prior σ {c.prior_sigma:g}, μ lr "
              f"{c.lr:g}, ρ lr {c.rho_lr or c.lr:g}, {c.epochs} epochs", flush=True)
    results = demo.run_all(configs, workers, say=(lambda *a, **k: None) if args.quiet else print)
    rows = [row for row, _, _ in results]
    print("\n" + demo.summary_table(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("mean ± standard error over seeds (each seed: its own split, init and masks); ECE: "
          "15 bins; FLOPs = 2 × multiply-adds, ratio vs dense VI over the same steps")
    for row, _, history in results:
        if row["method"] == "vi":
            print(f"dense VI, {row['preset']}, seed {row['seed']}: {assess(history).summary()}")
    with staging(out) as stage, temporary(json_path) as tmp_json:  # all files or none
        made = demo.figures(results, data.y_test, stage)
        write_json(tmp_json, rows)
        publish([(path, out / path.name) for path in made] + [(tmp_json, json_path)])
    for path in made:
        print(f"figure: {out / path.name}")
    print(f"results: {json_path}")
    return 0


DEMO_FIGURES = ("reliability.png", "convergence.png", "convergence_tempered.png")  # demo.figures


def _demo_outputs(args: argparse.Namespace, configs: list) -> tuple[Path, Path]:
    """The demo's folder and JSON path, checked: writable, distinct from the figures, and either
    new, this demo's own (the JSON lists the same run ids, so the figures beside it are this
    demo's too) or ``--overwrite``."""
    out = check_output_path(args.out, "folder", what="--out")
    figures = [check_output_path(out / name, "file", what="the figure") for name in DEMO_FIGURES]
    json_path = check_output_path(out / "demo.json" if args.json is None else args.json, "file",
                                  what="--json")
    guards.check_distinct(json=json_path, **{f"figure {p.name}": p for p in figures})
    ids = [run_id(cfg) for cfg in configs]
    guards.check_result_file(json_path, ids, overwrite=args.overwrite)
    for png in figures:
        if png.exists() and not args.overwrite and guards.run_ids_in(json_path) != ids:
            raise FileExistsError(f"figure {png} already exists and is not this demo's (no "
                                  f"results of the same runs in {json_path}); choose another "
                                  "--out, or pass --overwrite to replace it")
    return out, json_path


def cmd_train(args: argparse.Namespace) -> int:
    from .experiment import run

    if args.resume and args.checkpoint is None:
        raise ValueError("--resume needs --checkpoint PATH (the checkpoint to continue from)")
    cfg = make_config(args.preset, **overrides_from_flags(args))
    _check_train_outputs(args, cfg)
    result = run(cfg, checkpoint=args.checkpoint, resume=args.resume)
    from . import distributed

    if not distributed.is_main():
        return 0
    print(_format_table(printed_table([result.row])))
    if args.json is not None:
        write_json(args.json, result.row)
        print(f"results: {args.json}")
    return 0


def _check_train_outputs(args: argparse.Namespace, cfg: Any) -> None:
    """Before any work: the output paths can be written and lose nothing (a checkpoint is resumed
    or replaced only when asked; ``--json`` replaces only this run's own results), and a
    checkpoint to resume was written by this very configuration."""
    from .checkpoint import load

    for flag in ("json", "checkpoint"):
        if getattr(args, flag) is not None:
            check_output_path(getattr(args, flag), "file", what=f"--{flag}")
    guards.check_distinct(**{"--json": args.json, "--checkpoint": args.checkpoint})
    guards.check_checkpoint_target(args.checkpoint, resume=args.resume, overwrite=args.overwrite)
    if args.resume:
        load(args.checkpoint, cfg)  # refuses another run's checkpoint, listing what differs
    guards.check_result_file(args.json, [run_id(cfg)], overwrite=args.overwrite)


def cmd_fetch(args: argparse.Namespace) -> int:
    from .fetch import fetch

    check_output_path(args.root, "folder", what="--root")
    print(f"{args.name}: ready in {fetch(args.name, args.root)}")
    return 0


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="MAP vs dense VI vs SSVI vs static mask on embedded MNIST")
    demo.add_argument("--json", help="where to write the results (default OUT/demo.json)")
    demo.add_argument("--out", default="runs/demo", help="folder for the figures and results")
    demo.add_argument("--epochs", type=guards.positive_int,
                      help="epochs per run (default: the kit preset's)")
    demo.add_argument("--n-train", type=guards.positive_int,
                      help="use only this many training images")
    demo.add_argument("--seeds", type=guards.non_negative_int, nargs="+", default=[0, 1, 2],
                      help="seeds (default 0 1 2): each one its own split, init and masks")
    demo.add_argument("--workers", type=guards.positive_int,
                      help="runs at a time (default: 2, or 1 on one core)")
    demo.add_argument("--quiet", action="store_true", help="no line per finished run")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace figures and JSON that other runs wrote")
    demo.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = guards.OneLineParser(prog="python -m ssvi_lite",
                                  description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo(sub)

    tr = sub.add_parser("train", help="train and evaluate one configuration")
    add_config_flags(tr)  # one flag per TrainConfig field, default: the preset's value
    tr.add_argument("--json", help="write the results row here")
    tr.add_argument("--checkpoint", help="write a checkpoint here after every epoch")
    tr.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace an existing --checkpoint, or a --json of another run")
    tr.set_defaults(func=cmd_train)

    fe = sub.add_parser("fetch", help="download and verify a real dataset (needs internet)")
    fe.add_argument("name", choices=("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"))
    fe.add_argument("--root", default="data")
    fe.set_defaults(func=cmd_fetch)

    for name, module in DELEGATED.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        p = sub.add_parser(name, help=(mod.__doc__ or name).strip().split("\n")[0])
        mod.add_arguments(p)
        p.set_defaults(func=mod.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input prints one clear line and exits with status 2 (argument errors
    included), before any work where the input can be checked up front."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or an argument error, already printed (2)
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return args.func(args)
    except (ValueError, OSError, FloatingPointError, MemoryError) as err:
        print(f"error: {_message(err)}", file=sys.stderr)
        return 2


def _message(err: BaseException) -> str:
    """The error's message (OS errors name their file), without a traceback."""
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text
