"""Command line: ``python -m erlib notebooks --preset tiny|full [--only 01,02] [-p key value ...]``."""

from __future__ import annotations

import argparse
import sys


def _notebooks(args: argparse.Namespace) -> int:
    from erlib.notebooks import parse_value, run_notebooks, summary_table

    params = {key: parse_value(value) for key, value in (args.parameter or [])}
    only = args.only.split(",") if args.only else None
    results = run_notebooks(args.preset, only, params, args.out)
    print(summary_table(results))
    if results:
        print(f"\nexecuted notebooks and their figures: {results[0].output.parent}")
    return 1 if any(r.status != "ok" for r in results) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m erlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    nb = sub.add_parser("notebooks", help="execute the numbered notebooks headless with papermill")
    nb.add_argument("--preset", choices=("tiny", "full"), default="tiny",
                    help="tiny: a CPU in minutes; full: a GPU node (default: tiny)")
    nb.add_argument("--only", default="", help="comma-separated notebook prefixes, e.g. 01,02")
    nb.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"),
                    help="a papermill parameter, e.g. -p seed 3 (repeatable)")
    nb.add_argument("--out", default="runs/notebooks", help="root folder for executed notebooks (default runs/notebooks)")
    nb.set_defaults(func=_notebooks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
