"""Every task lives in a folder ``tasks/<folder>/``: its light ``__init__.py`` declares ``CARDS`` (one per
task: the default task, the paper's runs and budgets) and, where its tasks form a paper table, ``GROUPS``;
the code sits in ``task.py`` and is imported only when ``TASKS.get(name)`` asks for it. Nothing here imports
torch, so the leaderboard and ``make advise`` read cards cheaply."""
from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.errors import UserError
from benchmark.registry import Card, Registry


@dataclass(frozen=True)
class TaskCard(Card):
    default: bool = False  # the task a run gets without ``task=`` (its memory table is results/memory.csv)
    paper_budget: dict | None = None  # run-config values (strings) ``make paper`` runs it at; None: not a paper task
    paper_variants: bool = False  # ``make paper`` also runs each method's paper_variants on it
    paper_order: int = 0  # ``make paper`` runs its tasks in this order
    # ``make tune``'s trial: the run-config values (strings) of one trial of the search; None: the suite's
    # default (benchmark.tune.TRIAL_BUDGET). Short on purpose: it ranks learning rates, it trains no result.
    tune_budget: dict | None = None
    # ``make paper``'s tuned budget: run-config values of the runs at the tuned hyperparameters, trained until
    # the validation score stops improving (``patience``, with its cap); None: no tuned rows for this task.
    paper_tuned_budget: dict | None = None


@dataclass(frozen=True)
class TaskGroup:
    """Tasks of one family shown as one paper table: a column per member, then their average."""

    family: str  # the tasks' ``Task.family``
    title: str
    members: tuple[str, ...]  # task names, in the paper's column order
    names: dict[str, str] = field(default_factory=dict)  # task name -> column header (the paper's spelling)
    average: str = "Avg"  # header of the average column
    average_task: str = ""  # the task name of a row averaging every member ("" = none)
    average_note: str = ""  # how the leaderboard's notes explain that row
    every_column: bool = False  # show every member's column even without runs


TASKS: Registry = Registry("task", env_var="TASK", package="tasks")


def task_cards() -> list[TaskCard]:
    return TASKS.cards()


def task_groups() -> list[TaskGroup]:
    """Every folder's ``GROUPS``, in folder order."""
    return [g for module in TASKS.modules() for g in getattr(module, "GROUPS", ())]


def default_task() -> TaskCard:
    found = [c for c in task_cards() if c.default]
    if len(found) != 1:
        raise UserError(f"exactly one task card must be the default; found {[c.name for c in found]}")
    return found[0]


def paper_tasks(tuned: bool = False) -> list[TaskCard]:
    """The tasks ``make paper`` runs (``tuned``: those with a tuned budget), in its order."""
    return sorted((c for c in task_cards() if (c.paper_tuned_budget if tuned else c.paper_budget) is not None),
                  key=lambda c: (c.paper_order, c.name))
