"""Command line.

    python -m erlib train --method byol --er --epochs 200 --batch-size 512 [...]   train a method (or its ER variant)
    python -m erlib train --preset small --method dino                           start from a notebook preset
    python -m erlib train --resume runs/<name> [--epochs N]                       continue (or extend) a run
    python -m erlib eval runs/<name>                                              kNN, linear probe, RankMe
    python -m erlib methods [NAME]                                                the methods and their options
    python -m erlib notebooks --preset tiny|small|full [--only 01,02]             execute the notebooks headless
    python -m erlib claims --preset small [--seeds 0,1,2] [--only C2,C3]         decide the paper's claims from runs
    python -m erlib claims --preset small --plan                                 what that would train, and reuse
    python -m erlib bench [--methods simclr,byol] [--batch-size 512]              training throughput

Errors are reported on one line (``error: ...``, exit status 2); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
from typing import Any

#: Exceptions that mean "bad input or a refused request": reported on one line, exit status 2.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def _notebooks(args: argparse.Namespace) -> int:
    from erlib.notebooks import INDEX, parse_value, run_notebooks, summary_table

    params = {key: parse_value(value) for key, value in (args.parameter or [])}
    only = args.only.split(",") if args.only is not None else None
    results = run_notebooks(args.preset, only, params, args.out)
    print(summary_table(results))
    if results:
        print(f"\nexecuted notebooks, figures and the report page:\n{(results[0].output.parent / INDEX).resolve()}")
    return 1 if any(r.status != "ok" for r in results) else 0


def _field_help(f: dataclasses.Field, default: object) -> str:
    text = f.metadata.get("help", "")
    shown = "unset" if default is None else repr(default)
    return f"{text} (default: {shown})" if text else f"default: {shown}"


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--batch-size`` for ``batch_size``; booleans as ``--flag`` / ``--no-flag``),
    in the groups and with the help and choices of the field metadata. Defaults are suppressed, so that the
    namespace holds exactly the flags given (``--resume`` refuses the others, ``--preset`` lets them override)."""
    from erlib.config import GROUPS, TrainConfig

    defaults = TrainConfig()
    groups = {g: parser.add_argument_group(g) for g in GROUPS}
    for f in TrainConfig.field_info():
        group = groups[f.metadata["group"]]
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        helptext = _field_help(f, default).replace("%", "%%")
        common: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=helptext)
        if f.name == "method_options":
            group.add_argument("--opt", action="append", metavar="KEY=VALUE", **common)
        elif isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif f.metadata.get("choices"):
            choices = [c for c in f.metadata["choices"] if c != ""]
            group.add_argument(flag, choices=choices, metavar="{" + ",".join(choices) + "}", **common)
        else:
            kind = float if f.name == "final_weight_decay" else type(default)
            group.add_argument(flag, type=kind, metavar=f.name.upper(), **common)


def _method_options(items: list[str]) -> dict:
    from erlib.notebooks import parse_value

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--opt expects KEY=VALUE, got {item!r} (e.g. --opt tau_base=0.9)")
        options[key.strip()] = parse_value(value)
    return options


def _train(args: argparse.Namespace) -> int:
    from erlib.config import TrainConfig
    from erlib.train import resume_run, train

    given = {f.name: getattr(args, f.name) for f in TrainConfig.field_info() if hasattr(args, f.name)}
    if args.resume:
        extra = sorted(set(given) - {"epochs", "progress", "device"}) + (["preset"] if args.preset else [])
        if extra:
            flags = ", ".join("--" + ("opt" if k == "method_options" else k.replace("_", "-")) for k in extra)
            raise ValueError(
                f"--resume continues a run as it was configured; it takes only --epochs (to extend it), "
                f"--progress/--no-progress and --device, not {flags}"
            )
        print(resume_run(args.resume, **given))
        return 0
    if "method_options" in given:
        given["method_options"] = _method_options(given["method_options"])
    if args.preset:
        from erlib.presets import preset_config

        base = preset_config(
            args.preset,
            given.get("method", "simclr"),
            er=given.get("er", False),
            method_options=given.pop("method_options", None),
        ).to_dict()
        base.update(out_dir="runs", name="", progress=True)
        given = {**base, **given}
    print(train(TrainConfig(**given)))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from erlib.evaluate import evaluate_run

    result = evaluate_run(args.run, device=args.device, linear=not args.no_linear)
    print(json.dumps(result, indent=2))
    return 0


def _methods(args: argparse.Namespace) -> int:
    from erlib import methods as M

    if args.name and args.name not in M.METHODS:
        raise ValueError(f"unknown method {args.name!r}; choose one of {sorted(M.METHODS)}")
    for name in [args.name] if args.name else list(M.METHODS):
        print(f"{name}: {' '.join(M.summary(name).split())}")
        if args.name:
            print("\noptions (--opt KEY=VALUE), with their defaults:")
            for o in M.describe(name):
                if o.name in ("backbone", "er"):
                    continue
                choices = f"  one of {list(o.choices)}" if o.choices else ""
                print(f"  {o.name} ({o.type}) = {o.default!r}{choices}")
                if o.help:
                    print(textwrap.fill(o.help, width=116, initial_indent="      ", subsequent_indent="      "))
        print()
    if not args.name:
        print("python -m erlib methods NAME lists a method's options; every method has an ER variant (--er).")
    return 0


def _claims(args: argparse.Namespace) -> int:
    from datetime import datetime
    from pathlib import Path

    from erlib import targets as T
    from erlib.claims import format_verdicts
    from erlib.reproduce import check_extra_roles, export_results, format_plan, plan_runs, reproduce, seed_runs_dir

    ids = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"--seeds expects comma-separated integers >= 0, got {args.seeds!r}")
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"--seeds names a seed twice ({args.seeds!r}); name each seed once")
    extras = check_extra_roles(args.extra_role)  # a bad folder name is refused before any training
    if extras and not args.export:
        raise ValueError("--extra-role names run folders to export: give --export DIR too")
    if args.plan:
        if args.no_train or args.export or args.out:
            raise ValueError("--plan only lists the runs and writes nothing; drop --no-train, --out and --export")
        print(format_plan(plan_runs(args.preset, ids, seeds, args.runs_dir or None)))
        return 0
    out = Path(args.out or f"runs/claims/{args.preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    result = reproduce(args.preset, ids, seeds, out_dir=out, train=not args.no_train, runs_root=args.runs_dir or None)
    print(format_verdicts(result.combined))
    if result.targets:
        print("\npreset targets of the base runs: " + T.targets_table(result.targets).splitlines()[-1])
        print(f"  {result.targets_report}")
    if result.figures:
        print(f"figures of {', '.join(result.figures)}: {next(iter(result.figures.values())).parent}")
    print(f"\n{len(seeds)} seed(s), {result.minutes:.1f} min; report: {result.report[0] if result.report else out}")
    if args.export:
        dirs = {s: seed_runs_dir(args.preset, s, args.runs_dir or None) for s in seeds}
        command = "python -m erlib claims " + " ".join(sys.argv[2:])
        print(
            "reference runs: "
            + str(export_results(dirs, args.export, args.label or args.preset, command, ids, args.preset, extras))
        )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from datetime import datetime

    from erlib.bench import BenchConfig, format_table, run_benchmark, write_report

    cfg = BenchConfig(
        methods=args.methods.split(","),
        er_variants=not args.no_er,
        backbone=args.backbone,
        dataset=args.dataset,
        batch_size=args.batch_size,
        warmup=args.warmup,
        steps=args.steps,
        repeats=args.repeats,
        baseline_workers=args.workers,
        baseline=not args.no_baseline,
        compile=args.compile,
        small_heads=args.small_heads,
        device=args.device,
        paths=args.paths.split(",") if args.paths else None,
    )
    report = run_benchmark(cfg.validate())
    print(format_table(report))
    out = args.out or f"runs/bench/bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    print(f"JSON: {write_report(report, out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from erlib.bench import PATHS
    from erlib.data import DATASETS
    from erlib.nn import BACKBONES
    from erlib.presets import PRESETS

    parser = argparse.ArgumentParser(
        prog="python -m erlib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error"
    )
    tr = sub.add_parser(
        "train",
        parents=[debug],
        help="train a method (or resume a run)",
        description="Train a self-supervised method, or continue a run. Every flag is a field of "
        "erlib.config.TrainConfig (written to the run's config.json).",
    )
    tr.add_argument(
        "--resume",
        default="",
        metavar="RUN_DIR",
        help="continue the run in this folder as it was configured (only --epochs may be given, to "
        "extend it; a run killed before its first checkpoint restarts from step 0)",
    )
    tr.add_argument(
        "--preset",
        choices=PRESETS,
        default="",
        help="start from a notebook preset (backbone, data, recipe and per-method learning rate); "
        "explicit flags override it",
    )
    _add_train_flags(tr)
    tr.set_defaults(func=_train)
    be = sub.add_parser(
        "bench", parents=[debug], help="training throughput (images/s, TFLOP/s, memory) against a DataLoader baseline"
    )
    be.add_argument(
        "--methods",
        default="simclr,deepcluster,swav,byol,dino",
        help="comma-separated methods to measure (default: all five)",
    )
    be.add_argument("--no-er", action="store_true", help="originals only (default: each with its ER variant)")
    be.add_argument(
        "--backbone",
        default="resnet18_cifar",
        choices=sorted(BACKBONES),
        help="the encoder (default: resnet18_cifar, the GPU benchmark; convnet_tiny with --small-heads on a CPU)",
    )
    be.add_argument("--dataset", default="cifar10-jpeg75", choices=DATASETS, help="the images (default: the pack)")
    be.add_argument("--batch-size", type=int, default=512, help="source images per step, two views each (default 512)")
    be.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, caches) (default 10)")
    be.add_argument("--steps", type=int, default=20, help="steps per timed window (default 20)")
    be.add_argument("--repeats", type=int, default=5, help="timed windows; the median is reported (default 5)")
    be.add_argument("--workers", type=int, default=8, help="DataLoader workers of the baseline (default 8)")
    be.add_argument("--no-baseline", action="store_true", help="skip the torchvision DataLoader baseline")
    be.add_argument("--compile", action="store_true", help="torch.compile the erlib step")
    be.add_argument("--small-heads", action="store_true", help="the CPU presets' small heads")
    be.add_argument(
        "--paths",
        default="",
        help="comma-separated execution paths measured side by side, from "
        + ", ".join(PATHS)
        + " (auto: what the trainer picks on this device); default: fp32,auto on a CPU (before / after), auto on CUDA",
    )
    be.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    be.add_argument("--out", default="", help="JSON path (default runs/bench/bench-<timestamp>.json)")
    be.set_defaults(func=_bench)
    ev = sub.add_parser(
        "eval", parents=[debug], help="kNN (k=200 and 20), linear probe and RankMe of a run's checkpoint"
    )
    ev.add_argument("run", help="run folder, e.g. runs/simclr-20261129-120000-1a2b")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ev.add_argument("--no-linear", action="store_true", help="skip the linear probe")
    ev.set_defaults(func=_eval)
    me = sub.add_parser(
        "methods", parents=[debug], help="the methods, and every option of one (with its default and meaning)"
    )
    me.add_argument("name", nargs="?", default="", help="a method name: list its options")
    me.set_defaults(func=_methods)
    cl = sub.add_parser(
        "claims",
        parents=[debug],
        help="train what the claims need (reusing finished runs), decide them, write a report",
    )
    cl.add_argument("--preset", choices=PRESETS, default=PRESETS[0], help="the preset whose runs decide the claims")
    cl.add_argument("--only", default="", help="comma-separated claim ids, e.g. C2,C3 (default: all)")
    cl.add_argument("--seeds", default="0", help="comma-separated seeds (default 0); a claim PASSes only in all")
    cl.add_argument("--out", default="", help="report folder (default runs/claims/<preset>-<timestamp>)")
    cl.add_argument("--no-train", action="store_true", help="decide from the runs present; train nothing")
    cl.add_argument(
        "--plan",
        action="store_true",
        help="list the runs the claims need and what this command would do with each (reuse a finished run, resume "
        "an interrupted one, train, or train afresh over another configuration), with the epochs and optimiser steps "
        "left; then stop, having trained and written nothing",
    )
    cl.add_argument(
        "--runs-dir",
        default="",
        help="root of the runs, one seed<k>/ folder per seed (default: the "
        "notebooks' runs/notebook-runs/<preset>[-seed<k>])",
    )
    cl.add_argument(
        "--export",
        default="",
        metavar="DIR",
        help="also copy the runs (config, metrics, meta; no checkpoints) and their verdicts into DIR, "
        "e.g. results/cpu-small-<date>",
    )
    cl.add_argument("--label", default="", help="label of the exported reference runs, e.g. 'CPU reference'")
    cl.add_argument(
        "--extra-role",
        action="append",
        default=[],
        metavar="ROLE",
        help="with --export: also copy this run folder of each seed, outside the claims (repeatable), e.g. "
        "dino-er@entropy_on=embedding",
    )
    cl.set_defaults(func=_claims)
    nb = sub.add_parser("notebooks", parents=[debug], help="execute the numbered notebooks headless with papermill")
    nb.add_argument(
        "--preset", choices=PRESETS, default="tiny", help="tiny: a CPU in minutes; full: a GPU node (default: tiny)"
    )
    nb.add_argument("--only", default=None, help="comma-separated notebook prefixes, e.g. 01,02")
    nb.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("KEY", "VALUE"),
        help="a papermill parameter, e.g. -p seed 3 (repeatable)",
    )
    nb.add_argument(
        "--out", default="runs/notebooks", help="root folder for executed notebooks (default runs/notebooks)"
    )
    nb.set_defaults(func=_notebooks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        return args.func(args)
    try:
        code = args.func(args)
        sys.stdout.flush()  # so that a reader who left (``| head``) shows here, not at exit
        return code
    except BrokenPipeError:  # the reader of the output left: nothing to report, as with any Unix tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; a run continues with `python -m erlib train --resume RUN_DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
