"""What the publishing code needs to know about methods and tasks, read from the cards each folder declares
(``methods/<m>/__init__.py``, ``tasks/<t>/__init__.py``; no torch): the paper-layout tables of the task groups,
the row order, the ablation tables of the method that declares them, and what the figures highlight as ours.
Nothing under ``benchmark.publish`` spells a method's or task's name."""
from __future__ import annotations

from dataclasses import dataclass

from methods import GENERIC_VARIANTS, alternative_methods, method_cards, ours_method
from tasks import task_groups


@dataclass(frozen=True)
class Layout:
    """A family's table in the paper's layout: one column per task, in ``tasks`` order, shown as ``names``."""

    family: str
    title: str
    tasks: tuple[str, ...]
    names: dict
    every_column: bool  # a column for each of ``tasks`` even without results; else the tasks that have some,
    # then the family's other tasks by name
    average: str = "Avg"


_GROUPS = task_groups()
LAYOUTS = tuple(Layout(g.family, g.title, g.members, g.names, g.every_column, g.average) for g in _GROUPS)
# groups with a leaderboard row averaging all their members (GLUE's glue_avg): (family, members, row's task)
AVERAGED = tuple((g.family, g.members, g.average_task) for g in _GROUPS if g.average_task)
AVERAGE_TASKS = tuple(task for _, _, task in AVERAGED)
AVERAGE_NOTES = " ".join(g.average_note for g in _GROUPS if g.average_note)
NO_PAPER_TABLES = "No results for the paper-layout or ablation tables yet."

_OURS = ours_method()
OURS = _OURS.name  # highlighted in the score-vs-memory figures, as the paper's teaser does
OURS_QUANTIZER = _OURS.quantizer  # highlighted in the quantization figure
QUANT_TITLE = f"{_OURS.quantizer_display} vs other quantizers on the frozen backbone"

# memory alternatives: the rows a user would pick instead of a METL method (an "alternative" card, or any
# method under a generic memory variant such as ``@checkpointing``), drawn in their own colour
_ALTERNATIVE_METHODS = alternative_methods()


def is_alternative(label: str) -> bool:
    """True for a row label ``method[@variant]`` that is a memory alternative (see above)."""
    method, _, variant = str(label).partition("@")
    return method in _ALTERNATIVE_METHODS or variant in GENERIC_VARIANTS

# the ablation tables: those of every method card that declares some
_TABLED = [c for c in method_cards() if c.tables]
ABLATIONS = tuple((t.label, t.title, t.prefix, c.name) for c in _TABLED for t in c.tables)
ABLATION_ROWS = tuple(f"{method}@{prefix}" for _, _, prefix, method in ABLATIONS)  # method labels of their runs
ABLATIONS_MOVED = "".join(f"{c.display}'s ablation rows are in ablations.md. " for c in _TABLED)
ABLATIONS_HEAD = " ".join(
    f"{c.tables_heading}, from the " + " and ".join(f"{c.name}@{t.prefix}*" for t in c.tables) + " runs."
    for c in _TABLED)

# Rows in the paper's order (largest memory first, ours last); unknown methods after these, by name.
METHOD_ORDER = tuple(c.name for c in method_cards())


def experiments() -> dict[str, str]:
    """Each ablation row's one-line description, by variant name."""
    return {variant: about for c in _TABLED for t in c.tables for variant, about in t.rows}
