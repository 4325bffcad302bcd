"""A small generic registry: methods, tasks and backbones are looked up by name, never branched on.

A registry with a ``package`` finds its entries itself: the first time a name is listed or looked up it
scans the package's sub-packages and reads each one's light ``CARDS`` list. A card says what the edges of
the suite need to know (name, order, paper rows ...) without importing the code; the code, named by the
card's ``target``, is imported only by ``get``. So adding a method or task is adding a folder, and the
leaderboard, figures and ``make advise`` read cards without importing torch.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Generic, Iterator, TypeVar

from benchmark.errors import UserError

T = TypeVar("T")


class UnknownName(UserError):
    pass


@dataclass(frozen=True)
class Card:
    """What a folder declares about one entry: its ``name`` and where its code is, ``"module.path:Attr"``
    (``Attr`` may be dotted; a dict is entered by key: ``"tasks.glue.task:GLUE.cola"``)."""

    name: str
    target: str


def load_target(target: str) -> Any:
    """Import ``"module.path:Attr.sub"`` and return the object it names."""
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


class Registry(Generic[T]):
    def __init__(self, kind: str, env_var: str | None = None, package: str | None = None):
        self.kind = kind
        self.env_var = env_var  # the Makefile variable that selects this kind (for the error line)
        self.package = package  # scanned for sub-packages declaring ``CARDS`` (None: register() only)
        self._items: dict[str, T] = {}
        self._cards: dict[str, Card] = {}
        self._modules: list[ModuleType] | None = None if package else []

    # --- discovery ----------------------------------------------------------------------------------
    def modules(self) -> list[ModuleType]:
        """The package's sub-packages (their light ``__init__``), imported once, in name order."""
        if self._modules is None:
            self._modules = []  # set first: a sub-package that looks a name up while loading sees no loop
            pkg = importlib.import_module(self.package)
            for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
                if info.ispkg:
                    module = importlib.import_module(f"{self.package}.{info.name}")
                    self._modules.append(module)
                    for card in getattr(module, "CARDS", ()):
                        self.add_card(card)
        return self._modules

    def add_card(self, card: Card) -> None:
        if card.name in self._cards or card.name in self._items:
            raise ValueError(f"{self.kind} {card.name!r} registered twice")
        self._cards[card.name] = card

    def card(self, name: str) -> Card | None:
        """The card of ``name`` (no import of its code); None for an entry registered without one;
        unknown names fail as ``get`` does."""
        self.modules()
        if name not in self._cards:
            if name in self._items:
                return None
            self._unknown(name)
        return self._cards[name]

    def cards(self) -> list[Card]:
        self.modules()
        return [self._cards[n] for n in sorted(self._cards)]

    # --- lookup -------------------------------------------------------------------------------------
    def register(self, name: str, item: T | None = None) -> Any:
        """Register ``item`` under ``name`` directly (no card); usable as a decorator when ``item`` is omitted."""

        def add(obj: T) -> T:
            self.modules()
            if name in self._items or name in self._cards:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return add if item is None else add(item)

    def get(self, name: str) -> T:
        self.modules()
        if name not in self._items:
            if name not in self._cards:
                self._unknown(name)
            self._items[name] = load_target(self._cards[name].target)
        return self._items[name]

    def _unknown(self, name: str) -> None:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownName(f"unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: {', '.join(known)}")

    def names(self) -> list[str]:
        self.modules()
        return sorted(set(self._items) | set(self._cards))

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self.get(n)) for n in self.names()]
