"""Command line.

    python -m erlib train --method byol --er --dataset cifar10-jpeg75 --epochs 200 --batch-size 512 [...]
    python -m erlib train --resume runs/<name>
    python -m erlib eval runs/<name>
    python -m erlib notebooks --preset tiny|full [--only 01,02] [-p key value ...]
    python -m erlib bench [--methods simclr,byol] [--batch-size 512] [--compile]
"""

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


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--batch-size for batch_size; booleans as --flag / --no-flag)."""
    import dataclasses

    from erlib.train import TrainConfig

    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.name == "method_options":
            parser.add_argument("--opt", dest="method_options", action="append", default=[], metavar="KEY=VALUE",
                                help="a method option, e.g. --opt tau_base=0.9 (repeatable)")
        elif isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default)
        elif f.name == "final_weight_decay":
            parser.add_argument(flag, dest=f.name, type=float, default=None)
        else:
            parser.add_argument(flag, dest=f.name, type=type(default), default=default, help=f"default: {default!r}")


def _train(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    from pathlib import Path

    from erlib.notebooks import parse_value
    from erlib.train import TrainConfig, train

    if args.resume:
        run = Path(args.resume)
        if not (run / "config.json").is_file():
            raise SystemExit(f"--resume {run}: not a run folder (no config.json)")
        cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
        cfg = dataclasses.replace(cfg, out_dir=str(run.parent), name=run.name)
        print(train(cfg, resume=True))
        return 0
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    options = {}
    for item in values["method_options"]:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--opt expects KEY=VALUE, got {item!r}")
        options[key] = parse_value(value)
    values["method_options"] = options
    print(train(TrainConfig(**values)))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from erlib.evaluate import evaluate_run

    result = evaluate_run(args.run, device=args.device, linear=not args.no_linear)
    print(json.dumps(result, indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from datetime import datetime

    from erlib.bench import BenchConfig, format_table, run_benchmark, write_report

    cfg = BenchConfig(methods=args.methods.split(","), er_variants=not args.no_er, backbone=args.backbone,
                      dataset=args.dataset, batch_size=args.batch_size, warmup=args.warmup, steps=args.steps,
                      repeats=args.repeats, baseline_workers=args.workers, baseline=not args.no_baseline,
                      compile=args.compile, small_heads=args.small_heads, device=args.device)
    report = run_benchmark(cfg)
    print(format_table(report))
    out = args.out or f"runs/bench/bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    print(f"JSON: {write_report(report, out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m erlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train a method (or resume a run)")
    tr.add_argument("--resume", default="", metavar="RUN_DIR", help="continue the run in this folder")
    _add_train_flags(tr)
    tr.set_defaults(func=_train)
    be = sub.add_parser("bench", help="training throughput (images/s, TFLOP/s, memory) against a DataLoader baseline")
    be.add_argument("--methods", default="simclr,deepcluster,swav,byol,dino")
    be.add_argument("--no-er", action="store_true", help="originals only")
    be.add_argument("--backbone", default="resnet18_cifar")
    be.add_argument("--dataset", default="cifar10-jpeg75")
    be.add_argument("--batch-size", type=int, default=512)
    be.add_argument("--warmup", type=int, default=10)
    be.add_argument("--steps", type=int, default=20, help="steps per timed window")
    be.add_argument("--repeats", type=int, default=5, help="timed windows (the median is reported)")
    be.add_argument("--workers", type=int, default=8, help="DataLoader workers of the baseline")
    be.add_argument("--no-baseline", action="store_true")
    be.add_argument("--compile", action="store_true", help="torch.compile the erlib step")
    be.add_argument("--small-heads", action="store_true", help="the tiny preset's heads (CPU smoke runs)")
    be.add_argument("--device", default="auto")
    be.add_argument("--out", default="", help="JSON path (default runs/bench/bench-<timestamp>.json)")
    be.set_defaults(func=_bench)
    ev = sub.add_parser("eval", help="kNN (k=200 and 20), linear probe and RankMe of a run's checkpoint")
    ev.add_argument("run", help="run folder, e.g. runs/simclr-20261129-120000")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--no-linear", action="store_true", help="skip the linear probe")
    ev.set_defaults(func=_eval)
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
