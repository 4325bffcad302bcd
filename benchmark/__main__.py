"""CLI: ``python -m benchmark run|list|leaderboard|memory``. Bad input: one line, exit code 2."""
from __future__ import annotations

import argparse
import os
import sys

from benchmark.errors import UserError

QUICK = {"epochs": "1", "limit_train_samples": "160", "limit_eval_samples": "128", "official": "false",
         "warmup_steps": "0"}


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "5")
    import logging

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed", "transformers.modeling_utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def cmd_run(args) -> int:
    from benchmark.config import parse_overrides
    from benchmark.run import run

    overrides = parse_overrides(args.overrides)
    if args.quick:
        overrides = {**QUICK, **overrides}
    run(overrides)
    return 0


def cmd_list(args) -> int:
    import methods  # noqa: F401
    import tasks  # noqa: F401
    from benchmark.backbones import BACKBONES
    from methods.base import METHODS
    from tasks.base import TASKS

    print("methods:")
    for name, cls in METHODS.items():
        print(f"  {name:<16} v{cls.version}  {cls.about}")
        if cls.variants:
            print(f"  {'':<16}     variant=: {', '.join(cls.variants)}")
    print("tasks:")
    for name, t in TASKS.items():
        print(f"  {name:<16} v{t.version}  {t.family:<10} {t.about}")
    print("backbones (or hf:<hub id>, owner/name, a local model directory):")
    for name, spec in BACKBONES.items():
        print(f"  {name:<18} {spec.about}")
    return 0


def cmd_leaderboard(args) -> int:
    from benchmark.leaderboard import main

    return main(args.results_dir, args.out_dir or args.results_dir)


def cmd_memory(args) -> int:
    from benchmark.config import parse_overrides
    from benchmark.memory.measure import measure_all, measure_one

    overrides = parse_overrides(args.overrides)
    if args.one:
        measure_one(overrides)
        return 0
    task = overrides.get("task", "rotten_tomatoes")
    out = args.out or ("results/memory.csv" if task == "rotten_tomatoes" else f"results/memory-{task}.csv")
    return measure_all(overrides, methods=args.methods.split() if args.methods else None, out=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="one run: key=value ... (method= task= backbone= seed= and any config key)")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--quick", action="store_true", help="a few steps on a subset, written under results/tmp")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("list", help="registered methods, tasks and backbones")
    p.set_defaults(fn=cmd_list)
    p = sub.add_parser("leaderboard", help="tables from results/runs/**.json")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--out-dir", default="")
    p.set_defaults(fn=cmd_leaderboard)
    p = sub.add_parser("memory", help="peak training memory of every registered method (fresh process each)")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--methods", default="", help="space-separated subset of memory rows")
    p.add_argument("--out", default="", help="csv path (default results/memory.csv; results/memory-<task>.csv "
                                              "for another task)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_memory)
    args = parser.parse_args(argv)
    _quiet()
    try:
        return args.fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
