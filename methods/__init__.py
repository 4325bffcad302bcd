"""Every method is a folder ``methods/<name>/``: its light ``__init__.py`` declares ``CARDS`` (what the
leaderboard, figures, paper runs and defaults need to know), its code sits in ``method.py`` and is imported
only when ``METHODS.get(name)`` asks for it. Nothing here imports torch: reading cards stays cheap and
torch-free (``python -m benchmark.leaderboard``, ``make figures``, ``make advise``)."""
from __future__ import annotations

from dataclasses import dataclass

from benchmark.errors import UserError
from benchmark.registry import Card, Registry

# reference: the row memory ratios divide by; ours: highlighted; alternative: a memory tool a user would pick
# instead of a METL method (QLoRA), drawn apart as a "memory alternative" like the generic variants below
ROLES = ("reference", "baseline", "ours", "alternative")

# variants of every method: a memory tool a user would switch on instead of changing method, run as
# ``<method>@<variant>`` (key=value method overrides)
GENERIC_VARIANTS: dict[str, dict[str, str]] = {"checkpointing": {"checkpointing": "true"},
                                               "adamw8bit": {"optimizer": "adamw8bit"}}


@dataclass(frozen=True)
class PaperTable:
    """One of a method's own paper tables (MP-ISMoE's ablations): rows are the variants named ``prefix*``."""

    label: str  # "Table 3"
    title: str
    prefix: str  # variant-name prefix of its rows
    rows: tuple[tuple[str, str], ...] = ()  # (variant, one-line description), in the table's order


@dataclass(frozen=True)
class MethodCard(Card):
    role: str = "baseline"  # one of ROLES
    order: int = 100  # the row order of the paper's tables (smaller first)
    display: str = ""  # the name the paper prints
    about: str = ""  # one line for ``benchmark list``
    tables: tuple[PaperTable, ...] = ()
    tables_heading: str = ""  # the heading of ablations.md above its tables
    quantizer: str = ""  # the quantizer of its own, as named in results/quantization.csv
    quantizer_display: str = ""  # ... and as the paper prints it
    default: bool = False  # the method a run gets without ``method=``
    # its own commands: (name, "module:function", one line of help), run as ``python -m benchmark <name>``
    tools: tuple[tuple[str, str, str], ...] = ()

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"method card {self.name!r}: role {self.role!r} is not one of {', '.join(ROLES)}")


METHODS: Registry = Registry("method", env_var="METHOD", package="methods")


def method_cards() -> list[MethodCard]:
    """Every method's card in the paper's row order."""
    return sorted(METHODS.cards(), key=lambda c: (c.order, c.name))


def alternative_methods() -> frozenset[str]:
    """Methods whose card has role ``alternative`` (memory tools, not in the tuned comparison of the papers' methods)."""
    return frozenset(c.name for c in method_cards() if c.role == "alternative")


def _only(what: str, cards: list[MethodCard]) -> MethodCard:
    if len(cards) != 1:
        raise UserError(f"exactly one method card must be the {what}; found {[c.name for c in cards]}")
    return cards[0]


def default_method() -> MethodCard:
    return _only("default", [c for c in method_cards() if c.default])


def reference_method() -> MethodCard:
    """The row memory ratios divide by (full fine-tuning)."""
    return _only("reference", [c for c in method_cards() if c.role == "reference"])


def ours_method() -> MethodCard:
    return _only("ours", [c for c in method_cards() if c.role == "ours"])
