"""The ``respkd`` command: train, distil, evaluate, tabulate, reproduce.

Every user error (config, data, checkpoint, command line) ends as one line on stderr and exit status 2;
nothing is written before the input has been checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from respkd.errors import RespkdError


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML experiment config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--runs-root", default="runs", help="parent folder of run directories (default: runs)")
    p.add_argument("--force", action="store_true", help="overwrite a finished run of the same name")


def cmd_train(args: argparse.Namespace, distil: bool) -> int:
    from respkd.config import load_config
    from respkd.experiment import run

    cfg = load_config(args.config, args.overrides)
    if distil and not cfg.distills:
        raise RespkdError(f"{args.config}: 'distill' needs 'teacher' and 'kd' sections (use 'respkd train' for hard labels)")
    if not distil and cfg.distills:
        raise RespkdError(f"{args.config}: has a teacher; use 'respkd distill'")
    run(cfg, args.runs_root, force=args.force)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from respkd.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, data_path=args.data_path, data_root=args.data_root)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.checkpoint}: test errors {result['errors']}/{result['n']}, top-1 {result['top1']:.2f}%, "
              f"top-5 {result['top5']:.2f}%")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from respkd.report import results_table

    print(results_table([Path(d) for d in args.runs], link_root=Path(args.link_root) if args.link_root else None))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from respkd.plan import run_plan

    run_plan(args.plan, runs_root=args.runs_root, overrides=args.overrides, force=args.force)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="respkd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model with hard labels")
    _add_run_args(p)
    p.set_defaults(func=lambda a: cmd_train(a, distil=False))
    p = sub.add_parser("distill", aliases=["distil"], help="distil a teacher into a student")
    _add_run_args(p)
    p.set_defaults(func=lambda a: cmd_train(a, distil=True))
    p = sub.add_parser("eval", help="evaluate a checkpoint on its dataset's test set")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true", help="print one JSON object (top1, top5, errors, n, ...)")
    p.add_argument("--data-path", help="read the test set from this folder instead of the checkpoint's source")
    p.add_argument("--data-root", help="cache folder (default: the checkpoint config's data.root)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("table", help="print the results table (markdown) of finished runs")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--link-root", help="write Config/Download links relative to this folder")
    p.set_defaults(func=cmd_table)
    p = sub.add_parser("reproduce", help="run a plan of experiments in order, skipping finished ones, then tabulate")
    p.add_argument("plan", help="a plan YAML, or the name of one under configs/plans/ (e.g. mnist_table)")
    p.add_argument("--runs-root", help="parent folder of the run directories (default: the plan's runs_root)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key in every stage's config (repeatable)")
    p.add_argument("--force", action="store_true", help="rerun stages that already finished")
    p.set_defaults(func=cmd_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RespkdError as err:
        print(f"respkd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("respkd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
