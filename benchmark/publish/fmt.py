"""The number rules every table, the page and the figures share: what counts as missing, when a score
shows in percent, and how ``mean ± std`` reads. One place, so the three never disagree on a cell."""
from __future__ import annotations

import math

GIB = 1024 ** 3


def isnan(v) -> bool:
    """Missing: None or a float NaN (pandas' empty cell)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def is_percent(higher_is_better, *means) -> bool:
    """Fractions (accuracy, F1, correlations) show in percent; anything else (e.g. a loss) as it is."""
    return bool(higher_is_better) and all(not isnan(m) and -1.0 <= m <= 1.0 for m in means)


def pm(mean, std=None, scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` times ``scale``; "" for a missing mean, no ``± ...`` for a missing std."""
    if isnan(mean):
        return ""
    return f"{mean * scale:.{digits}f}" + ("" if isnan(std) else f" ± {std * scale:.{digits}f}")


def score(mean, std, percent: bool) -> str:
    """A leaderboard score: in percent with 2 decimals, else as it is with 4."""
    return pm(mean, std, *((100.0, 2) if percent else (1.0, 4)))


def fixed(v, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals, "" when missing."""
    return "" if isnan(v) else f"{v:.{digits}f}"


def signed(x: float, digits: int) -> str:
    """``+1.25`` / ``-0.50``; ``+ 0.0`` so rounding noise never prints ``-0.00``."""
    return f"{round(x, digits) + 0.0:+.{digits}f}"
